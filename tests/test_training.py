"""Trainer, data pipeline and CLI: through subprocesses where the user would use them."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from mim_fast.data.h5 import DataFormatError, read_metadata, read_sample, write_sample
from mim_fast.data.modalities import MISSING_VALUE
from mim_fast.data.normalize import normalize
from mim_fast.data.synthetic import generate
from mim_fast.experiments import EXPERIMENTS
from mim_fast.training.config import apply_override, resolve

SHORT = ["trainer.max_steps=6", "trainer.save_interval=3", "data_loader.num_samples=16"]


def cli(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "mim_fast.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})  # fmt: skip


def test_list_prints_every_experiment():
    out = cli("list")
    assert out.returncode == 0
    for key in EXPERIMENTS:
        assert key in out.stdout


def test_dry_run_json_mirrors_reference_names_and_applies_overrides():
    out = cli("dry_run", "single_bandset_all12_random_band_dropout_cross_random_masked_neg", "--json",
              "trainer.max_steps=100", "data_loader.global_batch_size=64", "trainer.callbacks.wandb.project=NAME",
              "launch.num_gpus=8")  # fmt: skip
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout)
    assert config["model"]["band_dropout_rate"] == 0.3 and config["model"]["random_band_dropout"] is True
    assert config["masking"]["type"] == "modality_cross_random"
    assert config["loss"]["type"] == "modality_patch_discrimination_masked_negatives"
    assert config["contrastive"]["type"] == "InfoNCE"
    assert len(config["tokenization"]["sentinel2_l2a"][0]) == 12
    assert config["trainer"]["max_steps"] == 100 and config["data_loader"]["global_batch_size"] == 64
    assert config["trainer"]["callbacks"]["wandb"]["project"] == "NAME" and config["launch"]["num_gpus"] == 8


def test_experiment_environment_variable_and_bad_inputs():
    out = cli("dry_run", "--json", env={"EXPERIMENT": "two_bandset_cross_random_masked_neg"})
    assert out.returncode == 0 and json.loads(out.stdout)["experiment"] == "two_bandset_cross_random_masked_neg"
    bad = cli("dry_run", "single_bandset_cross_random_masked_neg", "trainer.max_stepz=3")
    assert bad.returncode == 2 and "trainer.max_steps" in bad.stderr and "Valid keys" in bad.stderr
    unknown = cli("dry_run", "no_such_experiment")
    assert unknown.returncode == 2 and "mim-fast list" in unknown.stderr
    clusters = cli("dry_run", "single_bandset_cross_random_masked_neg", "launch.clusters=[\"ai2/x\"]")
    assert clusters.returncode == 0 and "torchrun" in clusters.stderr


def test_config_override_types():
    config = resolve("single_bandset_cross_random_masked_neg")
    apply_override(config, "trainer.lr=3e-4")
    apply_override(config, "data_loader.sampled_hw_p_list=[2,3]")
    assert config.trainer.lr == 3e-4 and config.data_loader.sampled_hw_p_list == [2, 3]
    with pytest.raises(ValueError, match="true or false"):
        apply_override(config, "trainer.autocast_bf16=3")
    with pytest.raises(ValueError, match="section.key=value"):
        apply_override(config, "trainer.lr")


def test_h5_round_trip_fills_missing_modalities_and_timesteps(tmp_path):
    path = str(tmp_path / "sample_0.h5")
    s2 = np.random.default_rng(0).normal(size=(8, 8, 2, 12)).astype(np.float32)
    timestamps = np.array([[1, 0, 2022], [1, 1, 2022], [1, 2, 2022], [1, 3, 2022]])
    write_sample(path, {"sentinel2_l2a": s2}, timestamps, [10.0, 20.0], {"sentinel2_l2a": np.array([False, True, False, True])})
    arrays, padded, length = read_sample(path, ["sentinel2_l2a", "sentinel1", "srtm"])
    assert length == 3  # cropped to the first..last present timestep (1..3)
    assert padded.shape == (12, 3) and (padded[3:] == padded[2]).all()
    np.testing.assert_array_equal(arrays["sentinel2_l2a"][:, :, 0], s2[:, :, 0])
    assert (arrays["sentinel2_l2a"][:, :, 1] == MISSING_VALUE).all()
    np.testing.assert_array_equal(arrays["sentinel2_l2a"][:, :, 2], s2[:, :, 1])
    assert arrays["sentinel1"].shape == (8, 8, 12, 2) and (arrays["sentinel1"] == MISSING_VALUE).all()
    assert arrays["srtm"].shape == (8, 8, 1, 1)


def test_bad_data_files_are_clear_errors(tmp_path):
    (tmp_path / "sample_0.h5").write_bytes(b"not an h5 file")
    with pytest.raises(DataFormatError, match="sample_0.h5"):
        read_sample(str(tmp_path / "sample_0.h5"), ["sentinel2_l2a"])
    with pytest.raises(DataFormatError, match="sample_metadata.csv"):
        read_metadata(str(tmp_path))


def test_synthetic_data_and_normalization(tmp_path):
    generate(str(tmp_path), 4, ["sentinel2_l2a", "sentinel1", "openstreetmap_raster"], tile=16, seed=1)
    assert len(read_metadata(str(tmp_path))) == 4
    arrays, _, _ = read_sample(str(tmp_path / "sample_0.h5"), ["sentinel2_l2a"])
    x = arrays["sentinel2_l2a"]
    present = x[x != MISSING_VALUE].reshape(-1, 12) if (x != MISSING_VALUE).any() else None
    if present is not None:
        normed = normalize("sentinel2_l2a", present)
        assert abs(float(normed.mean()) - 0.5) < 0.1  # statistics follow the reference normalisation


def _metrics(work):
    with open(os.path.join(work, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _finished_steps(work) -> int:
    """Complete lines of a metrics file another process may be writing (no partial last line)."""
    path = os.path.join(work, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return f.read().count("\n")


def test_smoke_run_is_deterministic_and_resumes_after_sigkill(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    first = cli("train", "--smoke", "--work-dir", a, *SHORT)
    assert first.returncode == 0, first.stderr[-2000:]
    metrics = _metrics(a)
    assert [m["step"] for m in metrics] == list(range(1, 7)) and all(np.isfinite(m["loss"]) for m in metrics)
    assert os.path.exists(os.path.join(a, "checkpoints", "step_6.pt"))
    # Killed after its first checkpoint, then re-run: same metrics as the uninterrupted run.
    proc = subprocess.Popen([sys.executable, "-m", "mim_fast.cli", "train", "--smoke", "--work-dir", b, *SHORT],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and not os.path.exists(os.path.join(b, "checkpoints", "step_3.pt")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = cli("train", "--smoke", "--work-dir", b, *SHORT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _metrics(b) == metrics
    state = torch.load(os.path.join(b, "checkpoints", "step_6.pt"), weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "data_position"} <= set(state)


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path):
    work = str(tmp_path / "w")
    args = ["train", "--smoke", "--work-dir", work, "trainer.max_steps=400", "trainer.save_interval=1000",
            "data_loader.num_samples=16"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "mim_fast.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        if _finished_steps(work) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    steps = [int(n[5:-3]) for n in os.listdir(os.path.join(work, "checkpoints")) if n.endswith(".pt")]
    assert steps and max(steps) == _metrics(work)[-1]["step"] < 400


def _launch(work, *extra):
    out = subprocess.run([sys.executable, "-m", "mim_fast.cli", "launch", "--smoke", "--nproc", "2", "--work-dir", work,
                          "trainer.max_steps=4", "trainer.save_interval=2", "data_loader.num_samples=16", *extra],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return _metrics(work)


def test_launch_two_gloo_processes_ddp_and_fsdp_agree_and_resume(tmp_path):
    ddp = _launch(str(tmp_path / "ddp"))
    assert [m["step"] for m in ddp] == [1, 2, 3, 4]
    work = str(tmp_path / "fsdp")
    fsdp = _launch(work, "launch.parallelism=fsdp")
    for a, b in zip(ddp, fsdp):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"])
    os.remove(os.path.join(work, "checkpoints", "step_4.pt"))  # resume the sharded run from step 2
    assert _launch(work, "launch.parallelism=fsdp") == fsdp


def test_wandb_offline_run_when_installed(tmp_path):
    pytest.importorskip("wandb")
    work = str(tmp_path / "wb")
    out = cli("train", "--smoke", "--work-dir", work, "trainer.max_steps=2", "data_loader.num_samples=16",
              env={"WANDB_SILENT": "true"})  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert os.path.exists(os.path.join(work, "wandb_runid.txt"))
    assert any(name.startswith("offline-run") for name in os.listdir(os.path.join(work, "wandb")))


def test_resume_ignores_a_metrics_line_cut_short(tmp_path):
    from mim_fast.training.trainer import _truncate_after

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n{"step": 3, "lo')
    _truncate_after(str(path), 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


def test_launch_splits_torchrun_options_with_values():
    from mim_fast.training.launch import _split_launch_args, torchrun_command

    key, work, nproc, smoke, overrides, torchrun = _split_launch_args(
        ["single_bandset_cross_random_masked_neg", "--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.1",
         "--nproc", "8", "--work-dir", "runs/x", "trainer.max_steps=10"]
    )  # fmt: skip
    assert (key, work, nproc, smoke) == ("single_bandset_cross_random_masked_neg", "runs/x", 8, False)
    assert overrides == ["trainer.max_steps=10"]
    assert torchrun == ["--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.1"]
    cmd = torchrun_command(key, overrides, work, nproc, smoke, torchrun, 2)
    assert "--standalone" not in cmd and cmd[cmd.index("--master_addr") + 1] == "10.0.0.1"


def test_first_update_uses_a_nonzero_learning_rate_and_logs_it(tmp_path):
    from mim_fast.training.trainer import lr_at

    work = str(tmp_path / "lr")
    out = cli("train", "--smoke", "--work-dir", work, "trainer.max_steps=2", "data_loader.num_samples=16")
    assert out.returncode == 0, out.stderr[-2000:]
    config = resolve("single_bandset_cross_random_masked_neg")
    from mim_fast.training.config import smoke

    config = smoke(config)
    apply_override(config, "trainer.max_steps=2")
    logged = [m["lr"] for m in _metrics(work)]
    assert logged == pytest.approx([lr_at(1, config), lr_at(2, config)]) and logged[0] > 0
