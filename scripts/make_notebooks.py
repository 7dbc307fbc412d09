"""Write the notebooks under notebooks/ from plain Python cell lists (outputs stripped).

Run from the repository root:  python scripts/make_notebooks.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

COLAB_TPU = [
    new_markdown_cell(
        "# kerastl on a Colab TPU\n\n"
        "Runtime → Change runtime type → **TPU**. Colab's TPU runtime is a TPU VM: it has "
        "no TensorFlow preinstalled, reads local files, and is reached with "
        "`TPUClusterResolver(tpu=\"local\")`. Install `kerastl[tpu]`, which brings "
        "`tensorflow-tpu` (TensorFlow plus libtpu) and never the plain `tensorflow` wheel.\n\n"
        "Cells marked *TPU only* are skipped automatically on a machine without a TPU "
        "(CI runs the rest at smoke size)."
    ),
    new_code_cell(
        "# Parameters: KERASTL_SMOKE=1 (set by CI) runs a tiny version of every step.\n"
        "import os, tempfile\n"
        "SMOKE = os.environ.get(\"KERASTL_SMOKE\") == \"1\"\n"
        "ON_COLAB = \"COLAB_RELEASE_TAG\" in os.environ\n"
        "OUTPUT = os.path.join(tempfile.mkdtemp(), \"run\") if SMOKE else \"runs/colab_tpu\"",
        metadata={"tags": ["parameters"]},
    ),
    new_code_cell(
        "# Install (Colab only): TensorFlow for TPU, then kerastl from its repository.\n"
        "if ON_COLAB:\n"
        "    import subprocess, sys\n"
        "    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\",\n"
        "                    \"kerastl[tpu] @ git+https://github.com/kerastl/kerastl\"],\n"
        "                   check=True)"
    ),
    new_markdown_cell(
        "## Connect the TPU\n\n`--strategy auto` finds it; here we show what it detects."
    ),
    new_code_cell(
        "import kerastl\n"
        "facts = kerastl.DeviceFacts.detect()\n"
        "print(facts)\n"
        "HAS_TPU = facts.tpu\n"
        "strategy = \"tpu\" if HAS_TPU else \"default\"\n"
        "print(\"strategy:\", strategy)"
    ),
    new_markdown_cell(
        "## Data\n\nOn a TPU VM local folders work. `gs://` paths work too (tf.data reads "
        "them); only the retired TPU Node runtime required them. We use the shipped "
        "Fashion-MNIST samples."
    ),
    new_code_cell(
        "from kerastl.run import data_samples_dir\n"
        "samples = data_samples_dir() / \"fashion\"\n"
        "print(kerastl.diagnose(samples / \"train\", samples / \"val\"))"
    ),
    new_markdown_cell(
        "## Train with TPUStrategy and bfloat16\n\n`--precision auto` picks "
        "`mixed_bfloat16` on TPU; TPU runs use `drop_remainder=True` and several steps per "
        "execution. Global batch = per-replica batch × 8 cores on a v2-8."
    ),
    new_code_cell(
        "result = kerastl.fit(kerastl.RunConfig(\n"
        "    data=str(samples / \"train\"), val_data=str(samples / \"val\"),\n"
        "    test_data=str(samples / \"test\"), backbone=\"MobileNetV2\",\n"
        "    backbone_kwargs={\"alpha\": 0.35}, weights=None, image_size=32,\n"
        "    mode=\"finetune\", epochs=2 if SMOKE else 10, head_epochs=1 if SMOKE else 3,\n"
        "    strategy=strategy, precision=\"auto\", batch_size=16, augment=[],\n"
        "    output=OUTPUT, verbose=2 if SMOKE else 1,\n"
        "))\n"
        "print(result.metrics[\"accuracy\"], result.output_dir)"
    ),
    new_markdown_cell("## Save and reload\n\nThe saved model takes raw pixels and loads safely."),
    new_code_cell(
        "model = kerastl.load_model(result.output_dir / \"model.keras\")\n"
        "model.summary(line_length=90)"
    ),
]


def write(name: str, cells: list) -> Path:
    notebook = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "accelerator": "TPU",
    })
    path = NOTEBOOKS / name
    nbformat.write(notebook, path)
    return path


if __name__ == "__main__":
    print(write("colab_tpu.ipynb", COLAB_TPU))
