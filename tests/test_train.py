"""The training job end to end on tiny configs: CLI, run folder, resume, NaN guard, overrides."""
import json
import os

import numpy as np
import pytest

import fastcnn
from fastcnn.cli import main
from fastcnn.training import Trainer, TrainingDiverged, apply_overrides, resolve_config

TINY = {
    "name": "tiny",
    "model": {"layers": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"type": "relu"}, {"type": "max_pool2d", "kernel_size": 2},
        {"type": "dropout", "p": 0.1},
        {"type": "flatten"}, {"type": "linear", "out_features": 3}]},
    "data": {"dataset": "synthetic", "n": 240, "num_classes": 3, "shape": [1, 8, 8],
             "validation_split": 0.2, "augment": {"horizontal_flip": True}},
    "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"type": "step", "step_size": 2, "gamma": 0.5},
    "train": {"epochs": 4, "batch_size": 16, "seed": 3},
}


def _quiet(*args, **kwargs):
    pass


def test_run_folder_and_metrics(tmp_path):
    metrics = Trainer(TINY, tmp_path / "run", log=_quiet, progress=False).fit()
    files = set(os.listdir(tmp_path / "run"))
    assert {"config.json", "history.json", "metrics.json", "best.fcnn", "last.fcnn"} <= files
    assert {"curves.png", "confusion.png"} <= files
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert [h["lr"] for h in history] == pytest.approx([0.05, 0.05, 0.025, 0.025])  # lr used
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test_accuracy"] == metrics["test_accuracy"] > 0.6
    assert {"test_loss", "train_time_s", "samples_per_s"} <= set(saved)
    assert not [f for f in files if f.endswith(".tmp")]


def test_resume_gives_the_same_weights(tmp_path):
    Trainer(TINY, tmp_path / "full", log=_quiet, progress=False).fit()
    Trainer(TINY, tmp_path / "part", overrides=["train.epochs=2"], log=_quiet, progress=False).fit()
    Trainer(TINY, tmp_path / "part", resume=True, log=_quiet, progress=False).fit()
    full = fastcnn.load(tmp_path / "full" / "last.fcnn").state_dict()
    part = fastcnn.load(tmp_path / "part" / "last.fcnn").state_dict()
    for key in full:
        np.testing.assert_array_equal(full[key], part[key], err_msg=key)
    history = json.loads((tmp_path / "part" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


def test_nan_guard_names_only_checkpoints_that_exist(tmp_path, capsys):
    """A loss that diverges in the first epoch: no checkpoint exists, the message says so and no
    run folder is left; diverging later names the last good checkpoint, which loads."""
    code = main(["train", _write(tmp_path, TINY), "--out", str(tmp_path / "run"), "--set",
                 "optimizer.lr=1e30", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "loss became" in err and "No epoch was saved" in err and "last.fcnn" not in err
    assert not (tmp_path / "run").exists()
    original = Trainer._train_epoch

    def diverge_in_epoch_3(self, epoch):
        if epoch == 3:
            self.optimizer.param_groups[0]["lr"] = 1e30
        return original(self, epoch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_train_epoch", diverge_in_epoch_3)
        with pytest.raises(TrainingDiverged,
                           match=r"epoch 3 .* The last good checkpoint is .*last\.fcnn"):
            Trainer(TINY, tmp_path / "later", log=_quiet, progress=False).fit()
    assert fastcnn.load_checkpoint(tmp_path / "later" / "last.fcnn").extra["epoch"] == 2


def _write(tmp_path, config):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_cli_train_eval_predict_summary(tmp_path, capsys):
    config = _write(tmp_path, TINY)
    out = tmp_path / "run"
    assert main(["train", config, "--out", str(out), "--epochs", "2", "--quiet"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["epochs_run"] == 2
    assert main(["eval", str(out / "best.fcnn"), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert evaluated["split"] == "test" and evaluated["samples"] == 48
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((2, 8, 8)).astype(np.float32))
    assert main(["predict", str(out / "best.fcnn"), str(tmp_path / "x.npy"), "--top", "2",
                 "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)["predictions"]
    assert len(predictions) == 2 and len(predictions[0]["top"]) == 2
    assert main(["summary", "lenet5"]) == 0
    text = capsys.readouterr().out
    assert "61,706" in text and "max_pool2d" in text


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    bad = dict(TINY, data={"dataset": "mnist_smaple"})
    assert main(["train", _write(tmp_path, bad), "--out", str(tmp_path / "r")]) == 2
    assert "did you mean 'mnist_sample'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing.fcnn")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_overrides():
    config = {"train": {"epochs": 3}, "optimizer": {"type": "sgd"}}
    apply_overrides(config, ["train.epochs=5", "optimizer.lr=0.1", "optimizer.nesterov=true",
                             "data.dataset=npz", "data.augment={\"horizontal_flip\": true}",
                             "name=my run"])
    assert config["train"]["epochs"] == 5 and config["optimizer"]["lr"] == 0.1
    assert config["optimizer"]["nesterov"] is True and config["data"]["dataset"] == "npz"
    assert config["data"]["augment"] == {"horizontal_flip": True} and config["name"] == "my run"
    with pytest.raises(ValueError, match="--set expects key=value"):
        apply_overrides(config, ["train.epochs"])
    # dicts merge, null deletes, anything else replaces; lists by index
    apply_overrides(config, ['data.augment={"random_crop": {"padding": 2}}',
                             "optimizer.nesterov=null", "optimizer.betas=[0.8, 0.9]",
                             'model={"layers": [{"type": "relu"}, {"type": "flatten"}]}',
                             "model.layers.0=null", 'model.layers.0={"start_dim": 1}'])
    assert config["data"]["augment"] == {"horizontal_flip": True, "random_crop": {"padding": 2}}
    assert "nesterov" not in config["optimizer"] and config["optimizer"]["betas"] == [0.8, 0.9]
    assert config["model"]["layers"] == [{"type": "flatten", "start_dim": 1}]
    with pytest.raises(ValueError, match=r"--set optimizer.lr.x: optimizer.lr is 0.1, not a"):
        apply_overrides(config, ["optimizer.lr.x=1"])
    with pytest.raises(ValueError, match=r"--set model.layers.5: '5' is not an index of this "
                                         r"list of 1"):
        apply_overrides(config, ["model.layers.5.x=1"])


def test_config_errors():
    with pytest.raises(ValueError, match="unknown section 'optimiser'"):
        resolve_config({"model": "lenet5", "optimiser": {}})
    with pytest.raises(ValueError, match="unknown train option"):
        resolve_config({"model": "lenet5", "train": {"epoch": 3}})
    with pytest.raises(ValueError, match=r"train.early_stopping: expected null or"):
        resolve_config({"model": "lenet5", "train": {"early_stopping": {"patiance": 3}}})
    with pytest.raises(ValueError, match=r"train.early_stopping.patience: expected an int"):
        resolve_config({"model": "lenet5", "train": {"early_stopping": {"patience": 0}}})
    with pytest.raises(FileNotFoundError, match=r"config file not found: lenet6 \(nor a "
                                                 r"bundled config: .*; did you mean 'lenet5'\?"):
        resolve_config({"model": "lenet6"})


@pytest.mark.parametrize("name,shape", [("lenet5", (1, 28, 28)), ("vgg_small", (3, 32, 32)),
                                        ("resnet_small", (3, 32, 32)), ("unet_small", (1, 32, 32))])
def test_bundled_models_build_and_backpropagate(name, shape):
    from fastcnn.training import bundled_config
    model = fastcnn.build_model(bundled_config(name))
    x = np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32)
    y = model(x)
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape and np.isfinite(dx).all()
    assert model.to_config()["layers"] == fastcnn.build_model(model.to_config()).to_config()["layers"]


def test_ctrl_c_keeps_the_last_completed_epoch(tmp_path, monkeypatch):
    original = Trainer._train_epoch

    def interrupted(self, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", interrupted)
    messages = []
    metrics = Trainer(TINY, tmp_path / "run", log=messages.append, progress=False).fit()
    assert metrics["interrupted"] is True and metrics["epochs_run"] == 2
    assert any("--resume" in m for m in messages)
    assert fastcnn.load_checkpoint(tmp_path / "run" / "last.fcnn").extra["epoch"] == 2
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    Trainer(TINY, tmp_path / "run", resume=True, log=_quiet, progress=False).fit()
    Trainer(TINY, tmp_path / "full", log=_quiet, progress=False).fit()
    a = fastcnn.load(tmp_path / "run" / "last.fcnn").state_dict()
    b = fastcnn.load(tmp_path / "full" / "last.fcnn").state_dict()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_evaluate_restores_the_model_mode_and_keeps_no_loss_state():
    from fastcnn.training import evaluate
    model = fastcnn.build_model({"input_shape": [4], "seed": 0, "layers": [
        {"type": "linear", "out_features": 3}]})
    loss = fastcnn.build_loss("cross_entropy")
    x = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    y = np.arange(10) % 3
    for mode in (True, False):
        model.train(mode)
        value, acc, preds = evaluate(model, loss, x, y, batch_size=4)
        assert model.training is mode and preds.shape == (10,) and 0 <= acc <= 1
        assert value == pytest.approx(float(loss.value(model(x), y)), rel=1e-6)
    with pytest.raises(RuntimeError, match="needs a call first"):
        loss.backward()


# ---- the run folder: never clobbered, never shared, nothing misleading left -------------------

def test_a_folder_that_holds_a_run_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    config = _write(tmp_path, dict(TINY, train=dict(TINY["train"], epochs=1)))
    out = str(tmp_path / "run")
    assert main(["train", config, "--out", out, "--quiet"]) == 0
    before = (tmp_path / "run" / "last.fcnn").read_bytes()
    capsys.readouterr()
    assert main(["train", config, "--out", out, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"run folder {out} already holds a run (config.json, history.json" in err
    assert "pass --resume to continue it, --overwrite to replace it" in err
    assert (tmp_path / "run" / "last.fcnn").read_bytes() == before       # untouched
    assert main(["train", config, "--out", out, "--quiet", "--overwrite"]) == 0
    assert main(["train", config, "--out", out, "--resume", "--overwrite"]) == 2
    assert "pass one of them" in capsys.readouterr().err
    assert not (tmp_path / "run" / ".fastcnn-train.lock").exists()        # released


def test_two_trainers_cannot_share_a_folder_and_a_stale_lock_is_taken_over(tmp_path):
    import subprocess
    import sys
    from fastcnn.training import LOCK_FILE, RunFolderError
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text(str(os.getpid()))           # a live process trains here
    with pytest.raises(RunFolderError, match=rf"is in use: process {os.getpid()} is training"):
        Trainer(TINY, run, log=_quiet, progress=False).fit()
    assert (run / LOCK_FILE).read_text() == str(os.getpid())  # its lock is left alone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (run / LOCK_FILE).write_text(dead)                        # that process has ended
    small = dict(TINY, train=dict(TINY["train"], epochs=1))
    assert Trainer(small, run, log=_quiet, progress=False).fit()["epochs_run"] == 1
    assert not (run / LOCK_FILE).exists()


def test_default_run_names_skip_folders_in_use(tmp_path, monkeypatch):
    from fastcnn.training import LOCK_FILE
    monkeypatch.chdir(tmp_path)
    small = dict(TINY, train=dict(TINY["train"], epochs=1))
    os.makedirs("runs/tiny")
    (tmp_path / "runs" / "tiny" / LOCK_FILE).write_text(str(os.getpid()))
    first = Trainer(small, log=_quiet, progress=False)
    first.fit()
    assert first.out_dir == os.path.join("runs", "tiny-2")
    second = Trainer(small, log=_quiet, progress=False)
    second.fit()
    assert second.out_dir == os.path.join("runs", "tiny-3")


def test_a_run_that_saved_no_epoch_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(self, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_train_epoch", interrupted)
    messages = []
    metrics = Trainer(TINY, tmp_path / "run", log=messages.append, progress=False).fit()
    assert metrics == {"name": "tiny", "epochs_run": 0, "interrupted": True}
    assert not (tmp_path / "run").exists()
    assert any("nothing was saved" in m for m in messages)
    assert not any("last.fcnn" in m for m in messages)
    # a folder the user made (with their own file) stays, without the run's files
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    Trainer(TINY, tmp_path / "mine", log=_quiet, progress=False).fit()
    assert sorted(os.listdir(tmp_path / "mine")) == ["notes.txt"]


def test_ctrl_c_from_the_shell_exits_130_and_keeps_the_last_epoch(tmp_path):
    """The CLI as a user runs it: SIGINT after the first epoch is saved; exit status 130, the
    message names last.fcnn, which exists and holds a completed epoch; --resume continues."""
    import signal
    import subprocess
    import sys
    import time
    config = dict(TINY, data=dict(TINY["data"], n=4000), train=dict(TINY["train"], epochs=500))
    path = _write(tmp_path, config)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fastcnn", "train", path, "--out", str(out),
                             "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not (out / "history.json").exists() and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert f"{out / 'last.fcnn'} holds the last completed epoch" in stdout
    assert fastcnn.load_checkpoint(out / "last.fcnn").extra["epoch"] >= 1
    assert not (out / ".fastcnn-train.lock").exists()


def test_resume_continues_the_run_in_the_folder_with_its_own_config(tmp_path, capsys):
    """--resume without a config takes the run's config.json (not the default config); more
    epochs may be asked for; a change that makes another run (batch size, model, data) is
    refused, naming the keys, and the run is untouched."""
    config = _write(tmp_path, dict(TINY, train=dict(TINY["train"], epochs=2)))
    out = str(tmp_path / "run")
    assert main(["train", config, "--out", out, "--quiet"]) == 0
    saved = (tmp_path / "run" / "config.json").read_text()
    assert main(["train", "--out", out, "--resume", "--set", "train.batch_size=32"]) == 2
    err = capsys.readouterr().err
    assert "this would change train.batch_size: 16 -> 32" in err
    assert "Only train.epochs" in err
    assert (tmp_path / "run" / "config.json").read_text() == saved
    assert main(["train", "--out", out, "--resume", "--epochs", "4"]) == 0
    out_text = capsys.readouterr().out
    assert "resumed" in out_text and "train.epochs 2 -> 4" in out_text
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["n"] == 240


def test_nan_in_the_data_is_named_before_training(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.random((60, 1, 8, 8)).astype(np.float32)
    x[17, 0, 3, 3] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=rng.integers(0, 3, 60))
    config = dict(TINY, data={"dataset": "npz", "path": str(tmp_path / "d.npz"),
                              "validation_split": 0.0})
    code = main(["train", _write(tmp_path, config), "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "contain NaN at sample" in err and "1 samples in all" in err
    assert "lower" not in err                     # not the divergence message
    assert not (tmp_path / "run").exists()


def test_bundled_names_build_and_cosine_schedules_follow_the_epochs(tmp_path, capsys):
    model = fastcnn.build_model("resnet_small")
    assert model.output_shape == (10,)
    with pytest.raises(FileNotFoundError, match=r"config file not found: nonexistent.json "
                                                r"\(nor a bundled config: lenet5, "):
        fastcnn.build_model("nonexistent.json")
    assert resolve_config(None)["schedule"] == {"type": "cosine", "T_max": 15}
    assert resolve_config(None, ["train.epochs=30"])["schedule"]["T_max"] == 30
    assert resolve_config(None, ["schedule.T_max=7", "train.epochs=30"])["schedule"]["T_max"] == 7
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"fastcnn {fastcnn.__version__}"


def test_channel_last_npz_is_refused_through_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((40, 20, 20, 3)).astype(np.float32),
             y=rng.integers(0, 3, 40))
    config = dict(TINY, data={"dataset": "npz", "path": str(tmp_path / "d.npz")})
    code = main(["train", _write(tmp_path, config), "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    assert "look channel-last" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_trained_model_carries_its_preprocessing(tmp_path):
    """fastcnn.load(best.fcnn) alone works on raw images: model.preprocess applies the training
    set's normalization, which the checkpoint's config holds (and to_config keeps)."""
    small = dict(TINY, train=dict(TINY["train"], epochs=1))
    trainer = Trainer(small, tmp_path / "run", log=_quiet, progress=False)
    trainer.fit()
    model = fastcnn.load(tmp_path / "run" / "best.fcnn").eval()
    assert model.preprocessing == {k: tuple(v) for k, v in trainer.normalization.items()}
    from fastcnn import data as datamod
    splits = datamod.load_dataset(small["data"], seed=small["train"]["seed"])
    raw = splits.test[0]
    np.testing.assert_array_equal(model(model.preprocess(raw)), model(trainer.test_set[0]))
    assert fastcnn.build_model(model.to_config()).preprocessing == model.preprocessing
    seeded = Trainer(dict(small, data=dict(small["data"], seed=7)), tmp_path / "seeded",
                     log=_quiet, progress=False)
    seeded._prepare_data()                        # data.seed, not train.seed, splits the data
    np.testing.assert_array_equal(
        seeded.val_set[1], datamod.load_dataset(small["data"], seed=7).validation[1])
    assert not np.array_equal(seeded.val_set[1], splits.validation[1])
    with pytest.raises(ValueError, match=r"preprocessing.mean must hold 1 finite numbers"):
        fastcnn.build_model(dict(model.to_config(), preprocessing={"mean": [0, 1], "std": [1]}))
