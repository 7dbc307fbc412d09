"""Strategy and precision selection, on made-up hardware (no GPU/TPU needed)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import pytest
import tensorflow as tf

import kerastl
from kerastl.core.errors import ConfigError
from kerastl.recipes.resolve import resolve_config
from kerastl.training import device_facts, precision, strategies
from kerastl.training import runtime as rt
from kerastl.training.device_facts import DeviceFacts

CPU = DeviceFacts()
CPU_BF16 = DeviceFacts(cpu_flags=frozenset({"avx2", "avx512f", "avx512_bf16"}))
CPU_AMX = DeviceFacts(cpu_flags=frozenset({"amx_bf16", "amx_tile"}))
# The same bfloat16 CPU with oneDNN capped (the AVX2 reproduction of .ci/run) or off.
CPU_BF16_CAPPED = dataclasses.replace(CPU_BF16, onednn_max_isa="AVX2")
CPU_BF16_CAPPED_AT_BF16 = dataclasses.replace(CPU_BF16, onednn_max_isa="AVX512_CORE_BF16")
CPU_BF16_NO_ONEDNN = dataclasses.replace(CPU_BF16, onednn_enabled=False)
ONE_A100 = DeviceFacts(gpus=((8, 0),))
TWO_A100 = DeviceFacts(gpus=((8, 0), (8, 0)))
ONE_P100 = DeviceFacts(gpus=((6, 1),))
V100_AND_P100 = DeviceFacts(gpus=((7, 0), (6, 1)))
TPU_VM = DeviceFacts(tpu=True, tpu_address="local", cpu_flags=frozenset({"avx512_bf16"}))
CLUSTER = DeviceFacts(n_workers=3)
CLUSTER_OF_GPUS = DeviceFacts(gpus=((8, 0), (8, 0)), n_workers=2)


@pytest.mark.parametrize(
    "facts, expected",
    [
        (TPU_VM, "tpu"),
        (CLUSTER, "multiworker"),
        (CLUSTER_OF_GPUS, "multiworker"),
        (TWO_A100, "mirrored"),
        (ONE_A100, "default"),
        (CPU_BF16, "default"),
    ],
)
def test_auto_strategy_follows_the_hardware(facts, expected):
    assert rt.choose_strategy_name("auto", facts) == expected


def test_explicit_strategy_overrides_auto():
    assert rt.choose_strategy_name("default", TWO_A100) == "default"


@pytest.mark.parametrize(
    "facts, strategy, expected",
    [
        (ONE_A100, "default", "mixed_float16"),
        (TWO_A100, "mirrored", "mixed_float16"),
        (ONE_P100, "default", "float32"),
        (V100_AND_P100, "mirrored", "float32"),  # every GPU must have Tensor Cores
        (TPU_VM, "tpu", "mixed_bfloat16"),
        (CPU_BF16, "default", "mixed_bfloat16"),
        (CPU_AMX, "default", "mixed_bfloat16"),
        (CPU, "default", "float32"),
        (CPU_BF16_CAPPED, "default", "float32"),
        (CPU_BF16_CAPPED_AT_BF16, "default", "mixed_bfloat16"),
        (CPU_BF16_NO_ONEDNN, "default", "float32"),
    ],
)
def test_auto_precision_follows_the_hardware(facts, strategy, expected):
    assert precision.choose_precision("auto", facts, strategy) == expected


def test_explicit_precision_overrides_auto():
    assert precision.choose_precision("float32", ONE_A100, "default") == "float32"


def test_float16_on_tpu_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="mixed_bfloat16") as info:
        precision.choose_precision("mixed_float16", TPU_VM, "tpu")
    assert "mixed_float16" in str(info.value)


@pytest.mark.parametrize(
    "call, quoted",
    [
        (lambda: rt.choose_strategy_name("gpu", CPU), "'gpu'"),
        (lambda: precision.choose_precision("float16", CPU, "default"), "'float16'"),
        (lambda: rt.make_strategy("horovod"), "'horovod'"),
        (lambda: rt.setup_runtime("default", "float32", batch_size=0, facts=CPU), "0"),
        (lambda: rt.setup_runtime(batch_size=8, batch_size_is="total", facts=CPU), "'total'"),
        (lambda: rt.setup_runtime(batch_size=8, jit_compile="yes", facts=CPU), "'yes'"),
        (lambda: rt.scale_learning_rate(1e-3, 64, rule="cubic"), "'cubic'"),
        (lambda: rt.scale_learning_rate(-1.0, 64), "-1.0"),
        (lambda: precision.loss_scale_optimizer(keras.optimizers.SGD(), "fp16"), "'fp16'"),
    ],
)
def test_bad_values_raise_config_error_quoting_them(call, quoted):
    with pytest.raises(ConfigError) as info:
        call()
    assert quoted in str(info.value)


def test_setup_runtime_sets_policy_before_the_model_is_built():
    runtime = rt.setup_runtime(batch_size=8, facts=CPU_BF16)
    with runtime.strategy.scope():
        model = kerastl.build_model("MobileNetV2", 3, input_shape=32, weights=None, dense_units=())
    assert runtime.precision == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    conv = model.get_layer("backbone").get_layer("Conv1")
    assert conv.compute_dtype == "bfloat16"
    assert conv.variable_dtype == "float32"
    assert model.output.dtype == "float32"
    assert "avx512_bf16" in runtime.describe()


def test_cpu_runtime_keeps_xla_off_and_batches_unchanged():
    runtime = rt.setup_runtime("auto", "float32", batch_size=16, facts=CPU)
    assert (runtime.strategy_name, runtime.replicas, runtime.global_batch) == ("default", 1, 16)
    assert runtime.jit_compile is False
    assert (runtime.steps_per_execution, runtime.drop_remainder) == (1, False)
    assert "XLA jit_compile off" in runtime.describe()


def test_gpu_runtime_turns_xla_and_float16_on():
    runtime = rt.setup_runtime("default", batch_size=8, facts=ONE_A100)
    assert runtime.jit_compile is True
    assert keras.mixed_precision.global_policy().name == "mixed_float16"


def test_tpu_runtime_drops_remainder_and_runs_32_steps_per_call(monkeypatch):
    # No TPU here: stand in the default strategy, the choices are what is tested.
    monkeypatch.setattr(rt, "make_strategy", lambda name, **_: tf.distribute.get_strategy())
    runtime = rt.setup_runtime(batch_size=8, facts=TPU_VM)
    assert (runtime.strategy_name, runtime.precision) == ("tpu", "mixed_bfloat16")
    assert (runtime.drop_remainder, runtime.steps_per_execution, runtime.jit_compile) == (
        True,
        32,
        True,
    )
    explicit = rt.setup_runtime(batch_size=8, steps_per_execution=4, facts=TPU_VM)
    assert explicit.steps_per_execution == 4


def test_float16_gets_a_loss_scale_optimizer_and_bfloat16_does_not():
    sgd = keras.optimizers.SGD()
    wrapped = precision.loss_scale_optimizer(sgd, "mixed_float16")
    assert isinstance(wrapped, keras.optimizers.LossScaleOptimizer)
    assert wrapped.inner_optimizer is sgd
    assert precision.loss_scale_optimizer(wrapped, "mixed_float16") is wrapped  # no double wrap
    assert precision.loss_scale_optimizer(sgd, "mixed_bfloat16") is sgd
    assert precision.loss_scale_optimizer(sgd, "float32") is sgd


def test_global_batch_size_is_split_over_replicas():
    runtime = rt.setup_runtime(
        "default", "float32", batch_size=12, batch_size_is="global", facts=CPU
    )
    assert (runtime.per_replica_batch, runtime.global_batch) == (12, 12)


@pytest.mark.parametrize(
    "rule, expected", [("linear", 4e-3), ("sqrt", 2e-3), ("none", 1e-3)]
)
def test_learning_rate_scaling_rules(rule, expected):
    assert rt.scale_learning_rate(1e-3, 128, base_batch=32, rule=rule) == pytest.approx(expected)


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json
    import tensorflow as tf
    from kerastl.training import runtime as rt
    from kerastl.training import strategies
    devices = strategies.split_logical_cpus(2)
    per = rt.setup_runtime("mirrored", "float32", batch_size=4, facts=rt.DeviceFacts())
    glob = rt.setup_runtime("mirrored", "float32", batch_size=8, batch_size_is="global",
                            facts=rt.DeviceFacts())
    ones = per.strategy.run(lambda: tf.constant(1.0))
    try:
        rt.setup_runtime("mirrored", batch_size=7, batch_size_is="global",
                         facts=rt.DeviceFacts())
        odd = "accepted"
    except rt.ConfigError as error:
        odd = str(error)
    print(json.dumps({
        "devices": len(devices), "replicas": per.replicas,
        "summed": float(per.strategy.reduce("SUM", ones, axis=None)),
        "global": per.global_batch, "split": glob.per_replica_batch,
        "describe": per.describe(), "odd": odd,
    }))
    """
)


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus_in_a_subprocess():
    # Logical devices must be configured before TensorFlow initialises, which this
    # test process has long done: hence a fresh interpreter.
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["devices"], report["replicas"], report["summed"]) == (2, 2, 2.0)
    assert (report["global"], report["split"]) == (8, 4)
    assert "global batch 8 = 4 per replica x 2" in report["describe"]
    assert "batch_size=7" in report["odd"] and "2 replicas" in report["odd"]


def test_split_logical_cpus_too_late_says_call_it_first():
    tf.config.list_logical_devices("CPU")  # makes sure TF has initialised devices
    with pytest.raises(RuntimeError, match="first thing"):
        strategies.split_logical_cpus(3)


def read_tf_config(monkeypatch, cluster: dict, task_type: str, index: int) -> None:
    config = {"cluster": cluster, "task": {"type": task_type, "index": index}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))


WORKERS = ["h1:1", "h2:1"]


@pytest.mark.parametrize(
    "cluster, task_type, index, chief",
    [
        ({"chief": ["h0:1"], "worker": WORKERS}, "chief", 0, True),
        ({"chief": ["h0:1"], "worker": WORKERS}, "worker", 0, False),
        ({"worker": WORKERS}, "worker", 0, True),
        ({"worker": WORKERS}, "worker", 1, False),
    ],
)
def test_only_the_chief_writes_to_the_output_dir(
    monkeypatch, tmp_path, cluster, task_type, index, chief
):
    read_tf_config(monkeypatch, cluster, task_type, index)
    runtime = rt.setup_runtime("default", "float32", batch_size=8, facts=CPU)
    assert (runtime.is_chief, runtime.worker_index) == (chief, index)
    out = rt.worker_output_dir(tmp_path / "run", runtime)
    try:
        if chief:
            assert out == tmp_path / "run" and out.is_dir()
        else:
            assert out.name.startswith(f"kerastl-worker{index}-") and out.is_dir()
            assert not (tmp_path / "run").exists()
    finally:
        if not chief:
            shutil.rmtree(out)


def test_without_tf_config_this_process_is_the_chief(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    runtime = rt.setup_runtime("default", "float32", batch_size=8, facts=CPU)
    assert (runtime.is_chief, runtime.worker_index) == (True, 0)


def test_multiworker_without_tf_config_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match='"cluster"'):
        rt.make_strategy("multiworker")


def test_malformed_tf_config_is_quoted(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{worker: h1}")
    with pytest.raises(ConfigError, match=r"\{worker: h1\}"):
        DeviceFacts.detect()


def test_detect_counts_workers_and_chief_from_tf_config(monkeypatch):
    read_tf_config(monkeypatch, {"chief": ["h0:1"], "worker": WORKERS}, "worker", 1)
    facts = DeviceFacts.detect()
    assert facts.n_workers == 3


def test_detect_sees_a_legacy_colab_tpu_node(monkeypatch):
    monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")
    facts = DeviceFacts.detect()
    assert (facts.tpu, facts.tpu_address) == (True, "grpc://10.0.0.2:8470")


@pytest.mark.parametrize(
    "env, isa, enabled",
    [
        ({}, "", True),
        ({"ONEDNN_MAX_CPU_ISA": "avx2"}, "AVX2", True),
        ({"DNNL_MAX_CPU_ISA": "AVX512_CORE"}, "AVX512_CORE", True),
        ({"ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "ALL"}, "AVX2", True),
        ({"TF_ENABLE_ONEDNN_OPTS": "0"}, "", False),
        ({"TF_ENABLE_ONEDNN_OPTS": "False"}, "", False),
        ({"TF_ENABLE_ONEDNN_OPTS": "1"}, "", True),
    ],
)
def test_detect_reads_the_onednn_settings(monkeypatch, env, isa, enabled):
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    facts = DeviceFacts.detect()
    assert (facts.onednn_max_isa, facts.onednn_enabled) == (isa, enabled)


def test_capped_onednn_says_why_bfloat16_is_not_used():
    # Under ONEDNN_MAX_CPU_ISA=AVX2, TensorFlow still sees avx512_bf16 and hands oneDNN
    # bfloat16 convolutions it cannot build ("could not create a primitive descriptor").
    runtime = rt.setup_runtime("default", batch_size=8, facts=CPU_BF16_CAPPED)
    assert runtime.precision == "float32"
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in runtime.describe()


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_bf16\n")
    assert device_facts.detect_cpu_flags(str(cpuinfo)) == frozenset({"fpu", "sse2", "avx512_bf16"})
    assert device_facts.detect_cpu_flags(str(tmp_path / "missing")) == frozenset()


def _tpu_runtime(address: str) -> rt.Runtime:
    return rt.Runtime(
        strategy=tf.distribute.get_strategy(), strategy_name="tpu",
        precision="mixed_bfloat16", replicas=8, per_replica_batch=16, global_batch=128,
        jit_compile=True, steps_per_execution=32, drop_remainder=True, is_chief=True,
        worker_index=0, tpu_address=address,
    )  # fmt: skip


def test_local_data_on_a_tpu_vm_is_fine_but_a_tpu_node_warns():
    assert rt.warn_if_local_data("data/train", _tpu_runtime("")) is False
    node = _tpu_runtime("grpc://10.0.0.2:8470")
    assert rt.warn_if_local_data("gs://bucket/train", node) is False
    with pytest.warns(UserWarning, match="gs://"):
        assert rt.warn_if_local_data(Path("data/train"), node) is True


@pytest.mark.parametrize("facts, strategy, backbone, side, trains, expected", [
    (DeviceFacts(), "default", "MobileNetV2", 32, True, 1),
    (DeviceFacts(), "default", "EfficientNetB0", rt.CPU_ONE_THREAD_MAX_SIDE, True, 1),
    (DeviceFacts(), "default", "MobileNetV2", rt.CPU_ONE_THREAD_MAX_SIDE + 1, True, 0),
    (DeviceFacts(), "default", "MobileNetV2", None, True, 0),
    (DeviceFacts(), "default", "MobileNetV2", 32, False, 0),  # frozen: one forward pass
    (DeviceFacts(), "default", "VGG16", 32, True, 0),  # dense convolutions split well
    (DeviceFacts(), "default", "ResNet50", 32, True, 0),
    (DeviceFacts(), "mirrored", "MobileNetV2", 32, True, 0),  # logical CPUs share cores
    (DeviceFacts(gpus=((8, 0),)), "default", "MobileNetV2", 32, True, 0),
    (DeviceFacts(tpu=True, tpu_address="local"), "tpu", "MobileNetV2", 32, True, 0),
])
def test_auto_intra_op_threads_is_one_only_where_it_was_measured_faster(
        facts, strategy, backbone, side, trains, expected):
    threads, reason = rt.choose_intra_op_threads("auto", facts, strategy, side, backbone,
                                                 trains)
    assert threads == expected and (("cores_threads.json" in reason) == (expected == 1))
    assert rt.choose_intra_op_threads(2, facts, strategy, side, backbone, trains) == (
        2, "requested explicitly")


def test_bad_intra_op_threads_are_quoted():
    with pytest.raises(ConfigError, match="intra_op_threads=-1"):
        rt.choose_intra_op_threads(-1, DeviceFacts(), "default", 32)
    with pytest.raises(ConfigError, match="intra_op_threads"):
        resolve_config(kerastl.RunConfig(intra_op_threads=0))


def test_intra_op_threads_set_too_late_keep_the_pool_and_say_so():
    tf.constant(1.0) + 1.0  # TensorFlow has started in this process
    current = tf.config.threading.get_intra_op_parallelism_threads()
    wanted = current + 1
    threads, reason = rt.apply_intra_op_threads(wanted, "test")
    assert threads == current and "already started" in reason and "new process" in reason


THREADS_SCRIPT = textwrap.dedent(
    """
    import json
    import tensorflow as tf
    from kerastl.training.runtime import setup_runtime
    from kerastl.training.device_facts import DeviceFacts
    runtime = setup_runtime("default", "float32", batch_size=8, facts=DeviceFacts(),
                            intra_op_threads="auto", image_size=32, backbone="MobileNetV2")
    print(json.dumps({"threads": tf.config.threading.get_intra_op_parallelism_threads(),
                      "describe": runtime.describe()}))
    """
)


def test_a_fresh_process_at_32_pixels_trains_with_one_intra_op_thread():
    result = subprocess.run([sys.executable, "-c", THREADS_SCRIPT], capture_output=True,
                            text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["threads"] == 1
    assert "Intra-op threads: 1 (MobileNetV2 (mobilenet_v2) at 32x32" in report["describe"]
