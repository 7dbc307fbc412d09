"""Write the notebooks under notebooks/ from plain Python cell lists (outputs stripped).

Run from the repository root:  python scripts/make_notebooks.py
"""

from __future__ import annotations

from pathlib import Path

from textwrap import dedent

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def md(text: str):
    return new_markdown_cell(dedent(text).strip())


def code(text: str, **kwargs):
    return new_code_cell(dedent(text).strip(), **kwargs)


def parameters(name: str, extra: str = ""):
    """The tagged parameters cell: CI sets KERASTL_SMOKE=1 and gets temporary outputs."""
    return code(f"""
        # Parameters: KERASTL_SMOKE=1 (set by CI) runs a tiny version of every step
        # and writes to a temporary directory; otherwise outputs go to runs/{name}/<time>.
        import os, tempfile, time
        SMOKE = os.environ.get("KERASTL_SMOKE") == "1"
        OUTPUT = (tempfile.mkdtemp(prefix="kerastl-{name}-") if SMOKE
                  else time.strftime("runs/{name}/%Y%m%d-%H%M%S"))
        """ + dedent(extra), metadata={"tags": ["parameters"]})

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


# A helper cell shared by the notebooks that use the shipped source backbone.
SOURCE_CELL = code('''
    import json
    import kerastl
    from kerastl.run import data_samples_dir

    SAMPLES = data_samples_dir()                      # the shipped data_samples/ folder
    SOURCE = json.loads((SAMPLES / "source" / "mobilenetv3small_fashion_source.json").read_text())
    SOURCE_WEIGHTS = SAMPLES / "source" / SOURCE["weights_file"]
    print(f"source backbone: {SOURCE['backbone']} {SOURCE['backbone_kwargs']}, "
          f"{SOURCE['input_size']}x{SOURCE['input_size']} inputs, pretrained on "
          f"{SOURCE['source_class_names']} (source test accuracy {SOURCE['source_test_accuracy']})")
''')

QUICKSTART = [
    md('''
        # 01 · Quickstart: a pretrained backbone, a new head, five new classes

        Transfer learning reuses a network trained on one task (the *source*) as the
        starting point for another (the *target*). The early layers of an image model
        learn edges, textures and shapes that are useful far beyond the classes they were
        trained on, so a new task needs far fewer labelled images than training from
        random weights.

        This notebook does the whole job with kerastl, start to finish, offline:

        1. build a model from a Keras Applications backbone and read its **unfreeze plan**;
        2. train it with `kerastl.fit(kerastl.RunConfig(...))` on the shipped samples;
        3. evaluate it and predict a few test images.

        The data are the shipped `data_samples/`: Fashion-MNIST images of five *target*
        classes (sandal, shirt, sneaker, bag, ankle boot). The shipped **source backbone**
        is a MobileNetV3Small that kerastl pretrained on the *other* five classes
        (t-shirt, trouser, pullover, dress, coat), so nothing is downloaded. With your own
        data you would pass `data="my_images/train"` and keep the ImageNet weights.
    '''),
    parameters("01_quickstart"),
    SOURCE_CELL,
    md('''
        ## 1. Build a model and read its unfreeze plan

        `kerastl.build_model` stacks three things: a preprocessing layer (the backbone's
        own `preprocess_input`, so the model takes raw pixels in `[0, 255]`), the
        pretrained base, and a new classification head. The returned model carries a
        `plan`: which blocks of the base train, how many parameters that is, and what
        BatchNorm does.

        Here we ask for `mode="finetune", unfreeze_blocks=2`: the top two blocks of the
        base train together with the head, everything below stays frozen. Blocks come
        from kerastl's registry, so a cut never splits a residual block in half.
    '''),
    code('''
        model = kerastl.build_model(
            SOURCE["backbone"], 5, input_shape=SOURCE["input_size"],
            backbone_kwargs=SOURCE["backbone_kwargs"],
            weights=SOURCE_WEIGHTS, weights_hash=SOURCE["weights_sha256"],
            mode="finetune", unfreeze_blocks=2, head="avg", dense_units=(),
        )
        print(model.plan)
    '''),
    md('''
        The same model with the whole base frozen trains only the head: a few thousand
        parameters instead of hundreds of thousands. `kerastl.set_regime` changes the
        regime of an existing model (and recompiles a compiled one, so stale `trainable`
        flags cannot silently train the old set of weights).
    '''),
    code('''
        print(kerastl.set_regime(model, "frozen"))
    '''),
    md('''
        ## 2. Train with `kerastl.fit`

        A `RunConfig` describes a whole run; the command line
        (`python -m kerastl.train ...`) and YAML files produce the same object. With no
        `data`, `fit` uses the shipped samples and the shipped source backbone.

        The default `mode="full"` runs two **phases**, the recipe of fastai's `fine_tune`:
        first the new head trains on the frozen base (a randomly initialised head would
        otherwise send large, noisy gradients into the pretrained weights), then every
        layer trains at a ten times lower learning rate. BatchNorm layers of the base stay
        in inference mode throughout (notebook 03 measures why).
    '''),
    code('''
        config = kerastl.RunConfig(
            epochs=2 if SMOKE else 10, head_epochs=1 if SMOKE else 3,
            output=OUTPUT, verbose=2,
        )
        for phase in config.resolved_phases():
            print(phase)
        result = kerastl.fit(config)
    '''),
    md('''
        `fit` returned a `RunResult` and wrote everything to the output directory: the
        model (`model.keras`, takes raw pixels), the base weights alone, the resolved
        `config.yaml` (rerun it with `python -m kerastl.train --config`), `history.csv`,
        metrics, a classification report and plots.
    '''),
    code('''
        from IPython.display import Image, Markdown, display

        print(sorted(p.name for p in result.output_dir.iterdir()))
        rows = [f"| {r['epoch']} | {r['phase']} | {r['loss']:.3f} | {r['accuracy']:.3f} "
                f"| {r['val_loss']:.3f} | {r['val_accuracy']:.3f} | {r['seconds']:.1f} s |"
                for r in result.history]
        display(Markdown("| epoch | phase | loss | accuracy | val loss | val accuracy | time |\\n"
                         "|---:|---|---:|---:|---:|---:|---:|\\n" + "\\n".join(rows)))
        display(Image(str(result.output_dir / "curves.png")))
    '''),
    md('''
        ## 3. Evaluate

        `fit` already scored the held-out **test** split (never seen during training or
        model selection). Reloading the saved model and scoring the test folder again
        with `kerastl.inference.evaluate_folder` must give the same accuracy: the saved
        file is self-contained (preprocessing included) and loads with `safe_mode=True`.
    '''),
    code('''
        from kerastl.inference import evaluate_folder

        test_dir = SAMPLES / "fashion" / "test"
        again = evaluate_folder(result.output_dir / "model.keras", test_dir)
        print(f"test accuracy from fit: {result.metrics['accuracy']:.4f} "
              f"(evaluated on the {result.metrics['evaluated_on']} split)")
        print(f"test accuracy of the reloaded model: {again['accuracy']:.4f}")
        print((result.output_dir / "classification_report.txt").read_text())
        display(Image(str(result.output_dir / "confusion_matrix.png")))
    '''),
    md('''
        ## 4. Predict a few test images

        The saved model takes raw pixels; `kerastl.from_folder(...).batches(size, n)`
        decodes and resizes images the way training did (greyscale PNGs become 3-channel
        images of the backbone's input size). Wrong predictions are shown in red.
    '''),
    code('''
        import matplotlib.pyplot as plt
        import numpy as np

        saved = kerastl.load_model(result.output_dir / "model.keras")
        test = kerastl.from_folder(test_dir)
        picked = test.subset(np.random.default_rng(0).choice(len(test), 12, replace=False))
        images, labels = next(iter(picked.batches(saved.input_shape[1], 12)))
        probs = saved.predict(images, verbose=0)
        labels = np.asarray(labels)
        truth = labels.argmax(-1) if labels.ndim > 1 else labels

        fig, axes = plt.subplots(2, 6, figsize=(12, 4.4))
        for ax, image, p, t in zip(axes.flat, images.numpy(), probs, truth):
            guess = int(p.argmax())
            ax.imshow(image.astype("uint8"))
            ax.set_title(f"{result.class_names[guess]}\\n{p.max():.0%} (true: "
                         f"{result.class_names[t]})", fontsize=8,
                         color="black" if guess == t else "red")
            ax.axis("off")
        fig.tight_layout()
        plt.show()
    '''),
    md('''
        ## Next

        * `02_frozen_vs_finetune_vs_scratch`: which regime to pick, measured.
        * `03_gradual_unfreezing`: phases, unfreeze plans, schedules, BatchNorm.
        * `04_distributed_and_mixed_precision`: strategies, precision, multi-worker runs.

        The same run from a shell: `python -m kerastl.train --epochs 10 --output runs/quick`.
    '''),
]

FROZEN_VS_FINETUNE_VS_SCRATCH = [
    md('''
        # 02 · Frozen vs fine-tuned vs from scratch: the transfer study in miniature

        When does transfer learning pay, and which regime should you use? This notebook
        answers it by measurement on a small, real problem:

        * **source task**: Fashion-MNIST classes 0-4 (t-shirt, trouser, pullover, dress,
          coat). kerastl pretrained the shipped MobileNetV3Small on all 30,000 of those
          images (`scripts/pretrain_source.py`).
        * **target task**: classes 5-9 (sandal, shirt, sneaker, bag, ankle boot), with
          only a *few* labelled images per class. Shoes and bags were never seen by the
          source model, so this is a real transfer, not a memorised one.

        The regimes, all with the same data, seed and epoch budget:

        | regime | what trains | why you would pick it |
        |---|---|---|
        | `frozen` | the head only, on fixed features | fastest; safest with very few labels |
        | `finetune` | head first, then the top blocks of the base | adapts high-level features to the new classes |
        | `scratch` | everything, from random weights | the baseline transfer must beat |
        | `sklearn-logreg` | a logistic regression on frozen pooled features | a linear probe: how good are the features as they are? |

        `kerastl.compare.compare` runs them side by side at several **fractions** of the
        training images, because the advantage of a pretrained start is largest when
        labels are scarce.
    '''),
    parameters("02_frozen_vs_finetune_vs_scratch", '''
        # Images per class in the training pool (compare draws fractions of it), in the
        # validation split, and in the test split (None: every official test image).
        PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS = (20, 10, 20) if SMOKE else (100, 30, None)
        FRACTIONS = (0.5, 1.0) if SMOKE else (0.1, 0.3, 1.0)
        EPOCHS = 2 if SMOKE else 10
    '''),
    SOURCE_CELL,
    md('''
        ## The target data

        With the Debian package `dataset-fashion-mnist` installed (or the idx files in
        `$KERASTL_FASHION_MNIST`), `kerastl.datasets.fashion_mnist(classes=[5, 6, 7, 8, 9])`
        reads the official files and we draw a seeded few-shot training set from them;
        otherwise the shipped samples (100 training images per class) are the pool.
        `compare` reads image folders, so the drawn arrays are written as PNGs.
    '''),
    code('''
        from pathlib import Path

        import numpy as np
        from PIL import Image as PILImage

        from kerastl.errors import DataError

        TARGET_CLASSES = [5, 6, 7, 8, 9]


        def draw(labels, per_class, rng, exclude=()):
            """Seeded indices of `per_class` images of every class (all if None)."""
            chosen = []
            for c in np.unique(labels):
                pool = np.setdiff1d(np.flatnonzero(labels == c), exclude)
                chosen.append(pool if per_class is None
                              else rng.choice(pool, per_class, replace=False))
            return np.sort(np.concatenate(chosen))


        def write_folder(root, images, labels, names, indices):
            for name in names:
                (root / name).mkdir(parents=True, exist_ok=True)
            for i in indices:
                PILImage.fromarray(images[i]).save(root / names[labels[i]] / f"{i}.png")
            return str(root)


        try:
            (x_train, y_train), (x_test, y_test), class_names = kerastl.datasets.fashion_mnist(
                classes=TARGET_CLASSES)
        except DataError as error:
            print(f"Using the shipped samples: {error}")
            DATA = {split: str(SAMPLES / "fashion" / split) for split in ("train", "val", "test")}
        else:
            rng = np.random.default_rng(0)
            train_idx = draw(y_train, PER_CLASS, rng)
            val_idx = draw(y_train, VAL_PER_CLASS, rng, exclude=train_idx)
            test_idx = draw(y_test, TEST_PER_CLASS, rng)
            root = Path(OUTPUT) / "data"
            DATA = {
                "train": write_folder(root / "train", x_train, y_train, class_names, train_idx),
                "val": write_folder(root / "val", x_train, y_train, class_names, val_idx),
                "test": write_folder(root / "test", x_test, y_test, class_names, test_idx),
            }
        for split, folder in DATA.items():
            data = kerastl.from_folder(folder)
            print(f"{split}: {len(data)} images, per class "
                  f"{dict(zip(data.class_names, np.bincount(data.labels).tolist()))}")
    '''),
    code('''
        import matplotlib.pyplot as plt

        train = kerastl.from_folder(DATA["train"])
        fig, axes = plt.subplots(1, 10, figsize=(12, 1.6))
        first = [int(np.flatnonzero(train.labels == c)[k]) for c in range(5) for k in range(2)]
        for ax, i in zip(axes, first):
            ax.imshow(PILImage.open(train.files[i]), cmap="gray")
            ax.set_title(train.class_names[train.labels[i]], fontsize=8)
            ax.axis("off")
        plt.show()
    '''),
    md('''
        ## Run the regimes side by side

        One `RunConfig` holds everything the regimes share; `compare` replaces only the
        regime (and the output directory) per run. We point it at the shipped source
        backbone explicitly, because with our own `data` kerastl would otherwise start
        from ImageNet weights. For `finetune` and `full`, kerastl trains the head first
        with the base frozen, then unfreezes at `lr × finetune_lr_factor` (0.1).
    '''),
    code('''
        from IPython.display import Image, Markdown, display

        from kerastl.compare import compare, comparison_markdown

        config = kerastl.RunConfig(
            data=DATA["train"], val_data=DATA["val"], test_data=DATA["test"],
            backbone=SOURCE["backbone"], backbone_kwargs=SOURCE["backbone_kwargs"],
            weights=str(SOURCE_WEIGHTS), weights_hash=SOURCE["weights_sha256"],
            image_size=SOURCE["input_size"], epochs=EPOCHS, batch_size=32, verbose=0,
        )
        rows = compare(config, fractions=FRACTIONS, output=OUTPUT)
        display(Markdown(comparison_markdown(rows)))
    '''),
    md('''
        ## Accuracy, time and size

        Left: test accuracy over the share of training images used. Middle and right:
        wall time and trainable parameters per regime on the largest fraction. Training
        time matters as much as accuracy in practice: the frozen head trains on cached
        base features (`kerastl.features`), so its epochs cost almost nothing.
    '''),
    code('''
        regimes = list(dict.fromkeys(row["regime"] for row in rows))
        largest = max(FRACTIONS)
        last = {row["regime"]: row for row in rows if row["fraction"] == largest}
        fig, (acc, sec, par) = plt.subplots(1, 3, figsize=(14, 3.8))
        for name in regimes:
            points = sorted((r["fraction"], r["accuracy"]) for r in rows if r["regime"] == name)
            acc.plot(*zip(*points), marker="o", label=name)
        acc.set(xlabel="fraction of the training images", ylabel="test accuracy",
                ylim=(0, 1), title="accuracy")
        acc.legend()
        sec.bar(regimes, [last[r]["seconds"] for r in regimes], color="tab:orange")
        sec.set(ylabel="seconds", title=f"wall time (fraction {largest:g})")
        par.bar(regimes, [last[r]["trainable_params"] for r in regimes], color="tab:green")
        par.set(ylabel="trainable parameters", yscale="log", title="trainable parameters")
        for ax in (sec, par):
            ax.tick_params(axis="x", labelrotation=20)
        fig.tight_layout()
        plt.show()
    '''),
    md('''
        ## Reading the result

        At smoke size (CI) the numbers are noise; run the notebook without
        `KERASTL_SMOKE` for the real study. What the full study
        (`python benchmarks/transfer_study.py`: 20 labelled images per class, all 5,000
        target test images, two seeded draws) typically measures on this pair of tasks:

        | regime | typical test accuracy |
        |---|---:|
        | logistic regression on raw pixels | 0.87 |
        | from scratch | 0.90 |
        | frozen base, trained head | 0.77 |
        | head, then top blocks fine-tuned | 0.89 |
        | head, then every layer fine-tuned | 0.91 |
        | logistic regression on frozen features | 0.82 |

        Two lessons that carry over to other data:

        * **Frozen features are only as good as their similarity to the target.** A
          backbone that has seen tops and dresses makes mediocre frozen features for
          shoes and bags; letting the base adapt (fine-tuning) is what beats the
          baselines. With ImageNet weights and natural photos, frozen features are far
          stronger.
        * **Fewer labels, bigger gap.** From-scratch training catches up as the labelled
          set grows; the fraction plot shows where your data sits.

        Your numbers are printed above; the run directories under `OUTPUT` hold each
        regime's curves, confusion matrix and saved model.
    '''),
]
