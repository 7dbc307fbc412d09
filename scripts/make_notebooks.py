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
    return code(dedent(f"""
        # Parameters: KERASTL_SMOKE=1 (set by CI) runs a tiny version of every step
        # in a temporary directory; otherwise outputs go to runs/{name}/<date-time>.
        import os, tempfile, time
        SMOKE = os.environ.get("KERASTL_SMOKE") == "1"
        OUTPUT = (tempfile.mkdtemp(prefix="kerastl-{name}-") if SMOKE
                  else time.strftime("runs/{name}/%Y%m%d-%H%M%S"))
        """) + dedent(extra), metadata={"tags": ["parameters"]})

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
        "facts = kerastl.training.device_facts.DeviceFacts.detect()\n"
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
        "from kerastl.data.samples import data_samples_dir\n"
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
    from kerastl.data.samples import data_samples_dir

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

        The default `mode="auto"` runs two **phases**: first a *linear probe* (a
        cross-validated logistic regression on the frozen base's cached features, written
        into the model's own head: seconds, and a head that will not send large, noisy
        gradients into the pretrained weights), then every layer trains at a ten times
        lower learning rate. With validation data the run keeps its best validated epoch,
        the probe included. `epochs="auto"` sizes the budget in optimizer steps (at least
        300). BatchNorm layers of the base stay in inference mode throughout (notebook 03
        measures why). The run then adds a logistic regression on the pooled input pixels
        to the network's logits (`pixel_blend`: small targets the source never saw are
        where a fine-tuned network can fall below a linear model on pixels); with
        validation data its strength and weight are chosen there, weight 0 included. These
        defaults were chosen on the validation images of ten transfer tasks
        (`benchmarks/transfer_suite.py`).
    '''),
    code('''
        config = kerastl.RunConfig(
            epochs=2 if SMOKE else "auto",
            output=OUTPUT, verbose=2,
        )
        result = kerastl.fit(config)
        for phase in result.config.phases:
            print(phase)
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
        with `kerastl.outputs.inference.evaluate_folder` must give the same accuracy: the saved
        file is self-contained (preprocessing included) and loads with `safe_mode=True`.
    '''),
    code('''
        from kerastl.outputs.inference import evaluate_folder

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

        fig, axes = plt.subplots(2, 6, figsize=(12, 5.4))
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
        ## 5. What the model gets wrong

        `kerastl.interpret` runs the model once over the test folder and keeps every
        image's probabilities and loss (`-ln p(true class)`): `most_confused()` lists the
        class pairs it mixes up, `top_losses(k)` the images it is most wrong about, and
        `plot_top_losses(k)` shows them with their Grad-CAM heatmap (where the network
        looked for the class it predicted). At 32x32 the backbone's last feature map is
        1x1, so there is nothing to localise and the grid says so; pass
        `layer="..."` for an earlier layer, or train at 64 px or more.
        `python -m kerastl.evaluate MODEL DATA --output DIR` writes the same as
        `predictions.csv`, `interpretation.json`, `top_losses.png` and one `report.html`
        page (every run writes one too).
    '''),
    code('''
        interp = kerastl.interpret(result, test_dir)
        for label, predicted, count in interp.most_confused()[:5]:
            print(f"{count:3d} x {label} taken for {predicted}")
        print("report:", result.output_dir / "report.html")
        display(interp.plot_top_losses(9))
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
        | `finetune` | head, then the top blocks of the base | adapts high-level features |
        | `scratch` | everything, from random weights | the baseline transfer must beat |
        | `sklearn-logreg` | logistic regression on frozen features | a linear probe |

        `kerastl.compare` runs them side by side at several **fractions** of the
        training images, because the advantage of a pretrained start is largest when
        labels are scarce.
    '''),
    parameters("02_frozen_vs_finetune_vs_scratch", '''
        # Images per class in the training pool (compare draws fractions of it), in the
        # validation split, and in the test split (None: every official test image).
        PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS = (10, 5, 10) if SMOKE else (100, 30, None)
        FRACTIONS = (0.5, 1.0) if SMOKE else (0.1, 0.3, 1.0)
        EPOCHS = 1 if SMOKE else 10
        # The smoke run leaves out "scratch" (the slowest to trace) to stay under a minute.
        REGIMES = (("frozen", "finetune", "sklearn-logreg") if SMOKE
                   else ("frozen", "finetune", "scratch", "sklearn-logreg"))
    '''),
    SOURCE_CELL,
    md('''
        ## The target data

        With the Debian package `dataset-fashion-mnist` installed (or the idx files in
        `$KERASTL_FASHION_MNIST`), `kerastl.data.datasets.fashion_mnist(classes=[5, 6, 7, 8, 9])`
        reads the official files and we draw a seeded few-shot training set from them;
        otherwise the shipped samples (100 training images per class) are the pool.
        `compare` reads image folders, so the drawn arrays are written as PNGs.
    '''),
    code('''
        from pathlib import Path

        import numpy as np
        from PIL import Image as PILImage

        from kerastl.core.errors import DataError

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
            (x_train, y_train), (x_test, y_test), class_names = kerastl.data.datasets.fashion_mnist(
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

        from kerastl.recipes.compare_regimes import compare, comparison_markdown

        config = kerastl.RunConfig(
            data=DATA["train"], val_data=DATA["val"], test_data=DATA["test"],
            backbone=SOURCE["backbone"], backbone_kwargs=SOURCE["backbone_kwargs"],
            weights=str(SOURCE_WEIGHTS), weights_hash=SOURCE["weights_sha256"],
            image_size=SOURCE["input_size"], epochs=EPOCHS, batch_size=32, verbose=0,
        )
        rows = compare(config, regimes=REGIMES, fractions=FRACTIONS, output=OUTPUT)
        display(Markdown(comparison_markdown(rows)))
    '''),
    md('''
        ## Accuracy, time and size

        Left: test accuracy over the share of training images used. Middle and right:
        wall time and trainable parameters per regime on the largest fraction. Training
        time matters as much as accuracy in practice. Here augmentation is on, so every
        regime runs images through the base each epoch; with `augment=[]` the frozen
        head trains on cached base features (`kerastl.models.features`) and its epochs cost
        almost nothing.
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
        | frozen base, trained head | 0.76 |
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

GRADUAL_UNFREEZING = [
    md('''
        # 03 · Gradual unfreezing, learning-rate schedules and BatchNorm

        Fine-tuning a pretrained network is a negotiation: let too much of the base
        change, too fast, and the new head's early, noisy gradients destroy the
        pretrained features ("catastrophic forgetting"); change too little and the
        features never adapt to the new classes. ULMFiT and fastai's `fine_tune`
        settled on a recipe: train the head first, then unfreeze the base from the top
        down, each stage at a lower learning rate. kerastl expresses each stage as a
        `kerastl.Phase`.
    '''),
    parameters("03_gradual_unfreezing", '''
        # Few labelled target images per class for the BatchNorm experiment, and epochs
        # of its three phases (head, top blocks, everything).
        PER_CLASS = 5 if SMOKE else 20
        PHASE_EPOCHS = (1, 1, 1) if SMOKE else (3, 3, 6)
        # Validation and test images per class (None: the whole shipped folders).
        VAL_PER_CLASS, TEST_PER_CLASS = (5, 10) if SMOKE else (None, None)
    '''),
    SOURCE_CELL,
    md('''
        ## Phases

        A phase is a regime, a number of epochs and a learning rate. Every phase sets its
        regime with `kerastl.set_regime` and gets a fresh optimizer and a freshly traced
        train step, so a change of `trainable` flags can never be silently ignored
        (keras#6405). Below: head only, then the top two blocks, then everything.
    '''),
    code('''
        def gradual_phases(bn_policy="frozen", epochs=PHASE_EPOCHS):
            head, top, full = epochs
            return [
                kerastl.Phase("head", head, mode="frozen", lr=1e-2),
                kerastl.Phase("top blocks", top, mode="finetune", unfreeze_blocks=2, lr=1e-3,
                              bn_policy=bn_policy),
                kerastl.Phase("everything", full, mode="full", lr=3e-4, bn_policy=bn_policy),
            ]


        for phase in gradual_phases():
            print(phase)
    '''),
    md('''
        ## Unfreeze plans: blocks and layers

        `unfreeze_blocks=K` unfreezes the top K blocks of kerastl's registry for the
        backbone (stages of MobileNet, residual blocks of ResNet), so a cut always falls
        on a block boundary. Watch the trainable parameter count grow with K; BatchNorm
        layers inside unfrozen blocks stay in inference mode (`bn_policy="frozen"`).
    '''),
    code('''
        model = kerastl.build_model(
            SOURCE["backbone"], 5, input_shape=SOURCE["input_size"],
            backbone_kwargs=SOURCE["backbone_kwargs"], weights=SOURCE_WEIGHTS,
            weights_hash=SOURCE["weights_sha256"], head="avg", dense_units=(),
        )
        for blocks in (1, 2, 4):
            print(kerastl.set_regime(model, "finetune", unfreeze_blocks=blocks), end="\\n\\n")
    '''),
    md('''
        `unfreeze_top=N` is the classic Keras recipe (`for layer in base.layers[-N:]:
        layer.trainable = True`). It counts *layers*, so it can cut a residual block in
        half: the block's convolutions train while its shortcut and earlier convolutions
        do not. kerastl allows it but says so in the plan. On ResNet50 (random weights,
        32×32, only to show the structure) the top 5 layers are part of `conv5_block3`:
    '''),
    code('''
        resnet = kerastl.build_model("ResNet50", 5, input_shape=32, weights=None, head="avg",
                                     dense_units=())
        split = kerastl.set_regime(resnet, "finetune", unfreeze_top=5)
        print(split)
        whole = kerastl.set_regime(resnet, "finetune", unfreeze_blocks=1)
        print("\\nunfreeze_blocks=1 instead:", whole.to_dict()["trainable_blocks"],
              f"{whole.trainable_params:,} trainable parameters, warnings: {whole.warnings}")
    '''),
    md('''
        ## Learning-rate schedules

        Each phase runs its own schedule over its own steps (`RunConfig(schedule=...)`):

        * `constant`: the same rate throughout.
        * `cosine` (the default): a short linear warm-up (`warmup_fraction`, 10 %), then
          cosine decay to zero. The warm-up matters most right after unfreezing: the
          optimizer's moment estimates are new, and the first steps are the largest.
        * `onecycle`: fastai's `fit_one_cycle`: 30 % warm-up from `peak/25`, then cosine
          decay to `peak/10⁴`.
    '''),
    code('''
        import matplotlib.pyplot as plt
        import numpy as np

        from kerastl.training.optimizers import make_schedule

        steps = np.arange(200)
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for kind in ("constant", "cosine", "onecycle"):
            schedule = make_schedule(kind, 1e-3, total_steps=200, warmup_steps=20)
            rates = [schedule if isinstance(schedule, float) else float(schedule(s))
                     for s in steps]
            ax.plot(steps, rates, label=kind)
        ax.set(xlabel="optimizer step", ylabel="learning rate",
               title="schedules for one 200-step phase, peak 1e-3")
        ax.legend()
        plt.show()
    '''),
    md('''
        ## Why BatchNorm stays in inference mode: a measurement

        A BatchNorm layer normalises with the statistics of the current batch while
        training and with its stored moving averages at inference. When a few hundred
        target images fine-tune a pretrained base with `bn_policy="train"`:

        * the forward pass in training sees batch statistics of small batches of a
          different distribution, so the weights adapt to normalisations that inference
          will not use;
        * the moving averages drift from the source statistics towards noisy estimates
          from a handful of batches.

        With `bn_policy="frozen"` (kerastl's default, as in the Keras transfer-learning
        guide) the unfrozen blocks train their convolutions while BatchNorm keeps the
        source statistics and runs identically in training and inference.

        We fine-tune the shipped source backbone with the gradual phases above on
        `PER_CLASS` target images per class, once with each policy, and compare
        validation accuracy and loss. Typical numbers from a full-size run are in the
        summary at the end; your run prints its own (at smoke size they are noise).
    '''),
    code('''
        import shutil
        from pathlib import Path


        def few_shot_folder(source_dir, per_class, root, seed=0):
            """Copy `per_class` seeded images of every class of `source_dir` to `root`."""
            rng = np.random.default_rng(seed)
            for class_dir in sorted(p for p in Path(source_dir).iterdir() if p.is_dir()):
                (root / class_dir.name).mkdir(parents=True, exist_ok=True)
                for file in rng.choice(sorted(class_dir.glob("*.png")), per_class,
                                       replace=False):
                    shutil.copy(file, root / class_dir.name / file.name)
            return str(root)


        def split_dir(split, per_class):
            if per_class is None:
                return str(SAMPLES / "fashion" / split)
            return few_shot_folder(SAMPLES / "fashion" / split, per_class,
                                   Path(OUTPUT) / "few_shot" / split)


        train_dir, val_dir, test_dir = (split_dir("train", PER_CLASS),
                                        split_dir("val", VAL_PER_CLASS),
                                        split_dir("test", TEST_PER_CLASS))
        results = {}
        for bn_policy in ("frozen", "train"):
            results[bn_policy] = kerastl.fit(kerastl.RunConfig(
                data=train_dir, val_data=val_dir, test_data=test_dir,
                backbone=SOURCE["backbone"], backbone_kwargs=SOURCE["backbone_kwargs"],
                weights=str(SOURCE_WEIGHTS), weights_hash=SOURCE["weights_sha256"],
                image_size=SOURCE["input_size"],
                phases=gradual_phases(bn_policy), batch_size=16, verbose=0,
                output=str(Path(OUTPUT) / f"bn_{bn_policy}"),
            ))
    '''),
    md('''
        With our own `data`, `fit` would start from ImageNet weights, so the shipped
        source backbone is named explicitly (as `RunConfig()` does for the shipped
        samples). The last epoch of every phase, and the test split at the end:
    '''),
    code('''
        from IPython.display import Markdown, display

        lines = ["| bn_policy | phase | val accuracy | val loss |", "|---|---|---:|---:|"]
        for bn_policy, result in results.items():
            for phase in gradual_phases(bn_policy):
                last = [r for r in result.history if r["phase"] == phase.name][-1]
                lines.append(f"| {bn_policy} | {phase.name} | {last['val_accuracy']:.3f} "
                             f"| {last['val_loss']:.3f} |")
        for bn_policy, result in results.items():
            lines.append(f"| {bn_policy} | **test** | {result.metrics['accuracy']:.3f} | "
                         f"{result.metrics['loss']:.3f} |")
        display(Markdown("\\n".join(lines)))

        fig, ax = plt.subplots(figsize=(7, 3.2))
        for bn_policy, result in results.items():
            ax.plot([r["epoch"] for r in result.history],
                    [r["val_accuracy"] for r in result.history], marker="o",
                    label=f"bn_policy={bn_policy!r}")
        ax.set(xlabel="epoch", ylabel="validation accuracy", title="head → top blocks → all")
        ax.legend()
        plt.show()
    '''),
    md('''
        ## Summary

        * Train the head first; then unfreeze from the top, at lower learning rates, each
          phase with a warm-up.
        * Prefer `unfreeze_blocks` over `unfreeze_top`: it never splits a block, and the
          plan tells you what trains before you spend compute.
        * Keep `bn_policy="frozen"` when the target data are few. Typical result of the
          experiment above without `KERASTL_SMOKE` (20 images per class, batches of 16,
          phases of 3, 3 and 6 epochs, seed 0, 2 CPU cores): after the last phase,
          validation accuracy about 0.85 with `"frozen"` against about 0.53 with
          `"train"` (test accuracy 0.87 against 0.47); with `"train"` accuracy *fell* once
          every BatchNorm layer trained. Training BatchNorm pays only with plenty of
          target data and reasonably large batches.
    '''),
]

DISTRIBUTED_AND_MIXED_PRECISION = [
    md('''
        # 04 · Distributed training and mixed precision

        kerastl chooses *where* and *in which precision* a run trains from a small
        record of hardware facts, so every decision can be explained (and tested on
        hardware you do not have). This notebook shows the decisions, sets up a runtime,
        checks what mixed precision does to a model, trains on two replicas on one CPU,
        and explains multi-worker runs.
    '''),
    parameters("04_distributed_and_mixed_precision"),
    md('''
        ## Two replicas on one CPU

        `MirroredStrategy` keeps one copy of the model per device and all-reduces the
        gradients every step. To try it without GPUs, split the CPU into two *logical*
        devices. This must happen before TensorFlow initialises its devices, so it is
        the first thing we do after importing kerastl.
    '''),
    code('''
        import kerastl
        from kerastl.training.strategies import split_logical_cpus

        print(split_logical_cpus(2))
    '''),
    md('''
        ## What kerastl sees: `DeviceFacts`

        `DeviceFacts.detect()` lists physical devices only (GPU compute capabilities, a
        TPU, CPU flags, the worker count in `TF_CONFIG`); it creates no strategy.
    '''),
    code('''
        facts = kerastl.training.device_facts.DeviceFacts.detect()
        print(facts.gpus, facts.tpu, facts.n_workers,
              sorted(facts.cpu_flags & {"avx512f", "avx512_bf16", "amx_bf16"}))
    '''),
    md('''
        ## The decisions, on hardware we do not have

        `choose_strategy_name` and `choose_precision` look only at a `DeviceFacts`, so we
        can inject any machine:

        * **strategy**: `tpu` if a TPU is attached, `multiworker` if `TF_CONFIG` names
          more than one worker, `mirrored` with several GPUs, else `default`.
        * **precision**: `mixed_float16` needs Tensor Cores (compute capability ≥ 7.0);
          on older GPUs it only adds casts. TPUs compute natively in bfloat16. CPUs with
          `avx512_bf16`/`amx_bf16` run bfloat16 matmuls in oneDNN (about 1.45× faster
          training measured on such a CPU); without them bfloat16 is emulated and slower.
    '''),
    code('''
        from IPython.display import Markdown, display

        from kerastl.training.runtime import choose_strategy_name

        from kerastl.training.precision import choose_precision

        Facts = kerastl.training.device_facts.DeviceFacts
        machines = {
            "1 GPU, compute capability 8.0 (A100)": Facts(gpus=((8, 0),)),
            "2 GPUs, compute capability 8.0": Facts(gpus=((8, 0), (8, 0))),
            "1 GPU, compute capability 6.1 (GTX 1080)": Facts(gpus=((6, 1),)),
            "TPU VM (Colab TPU runtime)": Facts(tpu=True, tpu_address="local"),
            "CPU with avx512_bf16": Facts(cpu_flags=frozenset({"avx512f", "avx512_bf16"})),
            "CPU without avx512_bf16": Facts(cpu_flags=frozenset({"avx2"})),
            "CPU, TF_CONFIG with 2 workers": Facts(n_workers=2),
            "this machine": facts,
        }
        lines = ["| machine | strategy | precision |", "|---|---|---|"]
        for name, machine in machines.items():
            strategy = choose_strategy_name("auto", machine)
            lines.append(f"| {name} | `{strategy}` | "
                         f"`{choose_precision('auto', machine, strategy)}` |")
        display(Markdown("\\n".join(lines)))
    '''),
    md('''
        ## A runtime, described

        `kerastl.setup_runtime` creates the strategy, sets the Keras global dtype policy
        and sizes the batch; `describe()` says what runs where and why. The **global
        batch** (what one optimizer step averages over) is the per-replica batch times
        the number of replicas, so doubling the replicas doubles the global batch unless
        you pass `batch_size_is="global"`. Learning rates tuned for one batch size are
        usually scaled with it (`kerastl.training.runtime.scale_learning_rate`).
    '''),
    code('''
        for strategy, batch_size_is in (("auto", "per_replica"), ("mirrored", "per_replica"),
                                         ("mirrored", "global")):
            runtime = kerastl.setup_runtime(strategy, "float32", batch_size=16,
                                            batch_size_is=batch_size_is)
            print(f"{strategy}, batch_size=16 {batch_size_is}: global batch "
                  f"{runtime.global_batch} = {runtime.per_replica_batch} × {runtime.replicas}")
            print("  " + runtime.describe(), end="\\n\\n")
    '''),
    md('''
        ## Mixed precision keeps the output layer in float32

        Under `mixed_bfloat16` (or `mixed_float16`) layers *compute* in 16 bits but keep
        their *variables* in float32, so small updates are not rounded away. kerastl's
        output layer is created with `dtype="float32"`: a softmax over 8 mantissa bits
        would make probabilities and the loss too coarse to train on. `float16` also
        needs loss scaling (its gradients underflow), so kerastl wraps the optimizer in a
        `LossScaleOptimizer` for `mixed_float16` only; bfloat16 has float32's exponent
        range and needs none.
    '''),
    code('''
        import keras

        from kerastl.training.precision import loss_scale_optimizer

        runtime = kerastl.setup_runtime("default", "mixed_bfloat16", batch_size=16)
        with runtime.strategy.scope():
            model = kerastl.build_model("MobileNetV2", 5, input_shape=32, weights=None,
                                        backbone_kwargs={"alpha": 0.35}, head="avg",
                                        dense_units=())
        conv = next(layer for layer in model.get_layer("backbone").layers
                    if isinstance(layer, keras.layers.Conv2D))
        head = model.get_layer("predictions")
        for layer in (conv, head):
            print(f"{layer.name:>12}: policy {layer.dtype_policy.name}, computes in "
                  f"{layer.compute_dtype}, variables in {layer.variable_dtype}")
        print("model output dtype:", model.output.dtype)
        for precision in ("float32", "mixed_bfloat16", "mixed_float16"):
            wrapped = loss_scale_optimizer(keras.optimizers.Adam(), precision)
            print(f"{precision:>15}: {type(wrapped).__name__}")
        keras.mixed_precision.set_global_policy("float32")  # back to the default for what follows
    '''),
    md('''
        ## Training on two replicas

        The same `kerastl.fit`, with `strategy="mirrored"`: the run log starts with the
        runtime description. kerastl uses one custom train step for every strategy
        (`strategy.run` over a `GradientTape` step, the loss averaged over the *global*
        batch), because Keras 3's `model.fit` fails under `MultiWorkerMirroredStrategy`
        (keras#20585). Without augmentation, the head of a frozen run trains on cached
        base features (computed once, then reused every epoch), so this is quick.
    '''),
    code('''
        result = kerastl.fit(kerastl.RunConfig(
            mode="frozen", epochs=1 if SMOKE else 5, strategy="mirrored", precision="float32",
            batch_size=16, augment=[], output=OUTPUT, verbose=2,
        ))
        print(f"accuracy {result.metrics['accuracy']:.3f} in {result.seconds:.1f} s")
    '''),
    md('''
        ## Several machines: `TF_CONFIG` and `--strategy multiworker`

        Every worker runs the *same* command; what differs is the `TF_CONFIG`
        environment variable, which lists the cluster and says which task this process
        is. Worker 0 is the **chief**.

        ```bash
        # on host1
        TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                    "task": {"type": "worker", "index": 0}}' \\
          python -m kerastl.train --data /shared/images --strategy multiworker --output runs/mw
        # on host2: the same, with "index": 1
        ```

        With `--strategy auto`, a `TF_CONFIG` with more than one worker already selects
        `multiworker`. Each worker reads the data itself (a shared file system or
        `gs://`), and each process's batch is the per-replica batch times its local
        replicas.

        **Only the chief writes.** Saving a distributed model is a collective operation,
        so every worker must save, but the non-chief workers save into throw-away
        temporary directories (`kerastl.training.runtime.worker_output_dir`), so one set of
        outputs lands in `--output`:
    '''),
    code('''
        import dataclasses
        import json

        from kerastl.training.runtime import worker_output_dir

        print(json.dumps({"cluster": {"worker": ["host1:12345", "host2:12345"]},
                          "task": {"type": "worker", "index": 1}}))
        chief = kerastl.setup_runtime("default", "float32", batch_size=16)
        worker = dataclasses.replace(chief, is_chief=False, worker_index=1)
        print("chief writes to   ", worker_output_dir(os.path.join(OUTPUT, "mw"), chief))
        print("worker 1 writes to", worker_output_dir(os.path.join(OUTPUT, "mw"), worker))
    '''),
    md('''
        ## Summary

        * `--strategy auto --precision auto` picks TPU/multi-worker/mirrored/default and
          float16/bfloat16/float32 from the hardware; `describe()` says why.
        * Global batch = per-replica batch × replicas.
        * Under mixed precision the output layer and the variables stay float32; only
          `mixed_float16` needs loss scaling.
        * Multi-worker: the same command on every host, a different `TF_CONFIG`; only the
          chief's outputs are kept. On a Colab TPU, see `05_colab_tpu.ipynb`.
    '''),
]


DEPLOYMENT = [
    md('''
        # 06 · Deployment: a portable model, LiteRT int8, ONNX, and 50 % pruning

        A transfer-learning run ends with `model.keras`. Getting it onto a phone, a
        serving box or a colleague's laptop takes three more things, each measured here:

        1. **a portable file**: `model.keras` holds only Keras built-in layers (the
           backbone's preprocessing included), so plain Keras loads it with
           `safe_mode=True`, without kerastl;
        2. **an exported, quantized model**: `kerastl.export` converts the run with
           Keras's own `model.export` and the TensorFlow Lite converter, *then runs the
           file with its own runtime* on the held-out test split and reports accuracy,
           agreement with Keras, size and latency (`export_report.json`);
        3. **pruning**: `RunConfig(prune=0.5)` adds a phase after training that zeroes
           the smallest half of the fine-tuned weights gradually, so the file compresses
           (gzip) and the accuracy recovers before the run ends.

        `kerastl[export]` brings the runtimes: `pip install 'kerastl[export]'`.
    '''),
    parameters("06_deployment", '''
        # Smoke size (CI): 32x32 images, 2 epochs, few calibration images and timings.
        EPOCHS, HEAD_EPOCHS = (2, 1) if SMOKE else (10, 3)
        IMAGE_SIZE = 32 if SMOKE else None          # None: the source backbone's 64x64
        CALIBRATION_IMAGES = 32 if SMOKE else 200   # training images that calibrate int8
        LATENCY_RUNS = 3 if SMOKE else 50
    '''),
    md('''
        ## 1. Train, and load the model with plain Keras

        The default run: the shipped samples and the shipped source backbone (see
        notebook 01). Then we load `model.keras` the way a serving box would: plain
        `keras.models.load_model`, `safe_mode=True`, no custom objects. Every layer is a
        Keras built-in; the backbone's own preprocessing is a `preprocess` layer (here
        `Identity`, because MobileNetV3 normalises inside its graph; a ResNet gets a fixed
        1x1 convolution that swaps RGB to BGR and subtracts the ImageNet mean).
    '''),
    code('''
        import json

        import keras
        import numpy as np

        import kerastl

        dense = kerastl.fit(kerastl.RunConfig(
            epochs=EPOCHS, head_epochs=HEAD_EPOCHS, image_size=IMAGE_SIZE,
            output=f"{OUTPUT}/dense", verbose=2 if SMOKE else 1,
        ))
        plain = keras.models.load_model(dense.output_dir / "model.keras", safe_mode=True)
        print(sorted({type(layer).__module__.split(".")[0] for layer in plain.layers}))
        print(type(plain.get_layer("preprocess")).__name__, plain.input_shape, "->",
              plain.output_shape)
    '''),
    md('''
        ## 2. Export to LiteRT with full-integer (int8) quantization

        Int8 needs the range of every activation: the converter measures it on a
        *representative dataset*. kerastl draws it from the run's **training** images
        (never the test split it reports on), with the run's seed, so the same run always
        gets the same calibration. The file keeps float32 input and output: raw RGB
        pixels in, probabilities out, like `model.keras`.
    '''),
    code('''
        int8 = kerastl.export(dense.output_dir, "litert", "int8",
                              calibration_images=CALIBRATION_IMAGES, latency_runs=LATENCY_RUNS)
        print(json.dumps({k: int8.to_dict()[k] for k in (
            "evaluated_on", "examples", "keras_accuracy", "exported_accuracy", "agreement",
            "bytes", "latency_ms", "calibration")}, indent=1))
    '''),
    md('''
        The same command from a shell, for every format:

        ```
        python -m kerastl.export runs/x --format litert --quantize int8
        python -m kerastl.export runs/x --format litert --quantize float16
        python -m kerastl.export runs/x --format onnx
        python -m kerastl.export runs/x --format savedmodel
        ```

        Here is ONNX, run by ONNX Runtime: a float32 export should agree with Keras on
        (nearly) every image. On a CPU with AVX-512 BF16 kerastl trains under
        `mixed_bfloat16`; the exporters get a float32 copy of the same weights, and
        `agreement_float32` isolates the conversion itself.
    '''),
    code('''
        if SMOKE:
            print("ONNX export skipped at smoke size (tests/test_deploy.py covers it).")
        else:
            onnx = kerastl.export(dense.output_dir, "onnx", latency_runs=LATENCY_RUNS)
            print(f"ONNX agreement with model.keras: {onnx.agreement:.2%} "
                  f"(float32 copy: {onnx.agreement_float32 or onnx.agreement:.2%}), "
                  f"largest output difference {onnx.max_abs_difference:.2e}")
    '''),
    md('''
        ## 3. Prune 50 % of the fine-tuned weights

        `prune=0.5` applies gradual magnitude pruning (Zhu & Gupta 2017) in one more
        phase, `prune`, which repeats the fine-tuning phase on the fine-tuned model: the
        share of zeroed weights rises along a cubic schedule over its first half, the
        masks are re-applied after every optimizer step (also under `tf.distribute`),
        the last epochs recover at 50 %, and only those can be kept as the best epoch.
        BatchNorm, biases and the output layer are never pruned, and neither are
        depthwise filters (9 taps with nothing to spare): the other kernels are pruned a
        little harder, so 50 % is the share over all of them. At the end the masks are
        dropped: the saved model is an ordinary Keras model full of exact zeros.
    '''),
    code('''
        pruned = kerastl.fit(kerastl.RunConfig(
            epochs=EPOCHS, head_epochs=HEAD_EPOCHS, image_size=IMAGE_SIZE, prune=0.5,
            output=f"{OUTPUT}/pruned", verbose=2 if SMOKE else 1,
        ))
        report = json.loads((pruned.output_dir / "pruning.json").read_text())
        print(f"{report['pruned_kernels']} of {report['kernels']} kernels pruned "
              f"(depthwise {report['depthwise']}): {report['sparsity']:.1%} zeros over all, "
              f"{report['model_sparsity']:.1%} of all weights")
    '''),
    code('''
        import matplotlib.pyplot as plt

        layers = report["layers"]
        fig, ax = plt.subplots(figsize=(11, 3))
        ax.bar(range(len(layers)), [row["sparsity"] for row in layers.values()],
               color=["tab:orange" if row["per_kernel"] else "tab:blue"
                      for row in layers.values()])
        ax.axhline(0.5, color="black", lw=0.8)
        ax.set(xlabel="prunable kernel (input to output)", ylabel="share of zeros",
               title="sparsity per kernel (orange: depthwise, kept)")
        plt.show()
    '''),
    md('''
        ## 4. Export the pruned model to int8, and compare

        Zeros stay zeros under int8 quantization, so pruning and quantization combine:
        the pruned int8 file is as large as the dense one (a `.tflite` stores every
        weight), but it compresses far better for download.
    '''),
    code('''
        from IPython.display import Markdown, display

        pruned_int8 = kerastl.export(pruned.output_dir, "litert", "int8",
                                     calibration_images=CALIBRATION_IMAGES,
                                     latency_runs=LATENCY_RUNS)
        rows = []
        for name, export in (("dense", int8), ("pruned 50 %", pruned_int8)):
            rows.append(f"| {name} | model.keras | {export.keras_accuracy:.4f} | "
                        f"{export.bytes['keras'] / 1e6:.2f} | "
                        f"{export.bytes['keras_gzip'] / 1e6:.2f} |")
            rows.append(f"| {name} | int8 .tflite | {export.exported_accuracy:.4f} | "
                        f"{export.bytes['exported'] / 1e6:.2f} | "
                        f"{export.bytes['exported_gzip'] / 1e6:.2f} |")
        display(Markdown("| model | file | test accuracy | MB | MB gzip |\\n"
                         "|---|---|---:|---:|---:|\\n" + "\\n".join(rows)))
    '''),
    md('''
        ## 5. Run the `.tflite` anywhere

        On the device only LiteRT's interpreter is needed (no TensorFlow, no Keras, no
        kerastl); class names come from `labels.json`, which every export folder holds.
    '''),
    code('''
        from ai_edge_litert.interpreter import Interpreter

        folder = kerastl.deploy.export.default_output(dense.output_dir, "litert", "int8")
        labels = json.loads((folder / "labels.json").read_text())
        interpreter = Interpreter(model_path=str(folder / "model_int8.tflite"))
        interpreter.allocate_tensors()
        size = labels["image_size"]
        from kerastl.data.samples import data_samples_dir

        test = kerastl.from_folder(data_samples_dir() / "fashion" / "test")
        picked = test.subset(np.random.default_rng(0).choice(len(test), 8, replace=False))
        images, truth = next(iter(picked.batches(size, 8)))
        guesses = []
        for image in images.numpy():
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
            interpreter.invoke()
            probs = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]
            guesses.append(labels["class_names"][int(probs.argmax())])
        print(list(zip(guesses, [labels["class_names"][int(t)] for t in truth])))
    '''),
    md('''
        ## Summary

        * `model.keras` from kerastl is portable: built-in layers only, `safe_mode=True`.
        * `kerastl.export` / `python -m kerastl.export` writes SavedModel, LiteRT (float32,
          float16, dynamic-range, int8) or ONNX and verifies the file with its own runtime;
          `export_report.json` keeps the evidence.
        * `--prune 0.5` trains a model with half its weights at zero; combine it with int8.
        * `benchmarks/export.py` measures all of this on the default run
          (`benchmarks/results/export.json`).
    '''),
]


NOTEBOOK_CELLS = {
    "05_colab_tpu.ipynb": COLAB_TPU,
    "01_quickstart.ipynb": QUICKSTART,
    "02_frozen_vs_finetune_vs_scratch.ipynb": FROZEN_VS_FINETUNE_VS_SCRATCH,
    "03_gradual_unfreezing.ipynb": GRADUAL_UNFREEZING,
    "04_distributed_and_mixed_precision.ipynb": DISTRIBUTED_AND_MIXED_PRECISION,
    "06_deployment.ipynb": DEPLOYMENT,
}


def write(name: str, cells: list) -> Path:
    metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    }
    if name == "05_colab_tpu.ipynb":
        metadata["accelerator"] = "TPU"
    notebook = new_notebook(cells=cells, metadata=metadata)
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{index:02d}"  # stable ids: regenerating changes nothing
    path = NOTEBOOKS / name
    nbformat.write(notebook, path)
    return path


if __name__ == "__main__":
    for name, cells in NOTEBOOK_CELLS.items():
        print(write(name, cells))
