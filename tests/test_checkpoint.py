"""save / load: one atomic .npz file; damaged or foreign files refused clearly."""
import os

import numpy as np
import pytest

import fastcnn

CONFIG = {"input_shape": [2, 6, 6], "seed": 3, "layers": [
    {"type": "conv2d", "out_channels": 3, "kernel_size": 3}, {"type": "flatten"}]}


def _trained():
    model = fastcnn.build_model(CONFIG)
    opt = fastcnn.build_optimizer({"type": "adam", "lr": 0.01}, model.parameters())
    sched = fastcnn.build_scheduler({"type": "step", "step_size": 2}, opt)
    x = np.random.default_rng(0).standard_normal((4, 2, 6, 6)).astype(np.float32)
    for _ in range(3):
        model.zero_grad()
        model.backward(model(x))
        opt.step()
        sched.step()
    return model, opt, sched, x


def test_round_trip_with_optimizer_and_scheduler(tmp_path):
    model, opt, sched, x = _trained()
    path = tmp_path / "ckpt.fcnn"
    fastcnn.save(model, path, optimizer=opt, scheduler=sched, extra={"epoch": 3, "mean": [0.5]})
    ck = fastcnn.load_checkpoint(path)
    np.testing.assert_array_equal(ck.model(x), model(x))
    assert ck.extra == {"epoch": 3, "mean": [0.5]}
    opt2 = fastcnn.build_optimizer({"type": "adam", "lr": 0.01}, ck.model.parameters())
    opt2.load_state_dict(ck.optimizer_state)
    sched2 = fastcnn.build_scheduler({"type": "step", "step_size": 2}, opt2)
    sched2.load_state_dict(ck.scheduler_state)
    for m, o, s in ((model, opt, sched), (ck.model, opt2, sched2)):
        m.zero_grad()
        m.backward(m(x))
        o.step()
        s.step()
    np.testing.assert_array_equal(ck.model(x), model(x))
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_readable_with_plain_numpy(tmp_path):
    model, *_ = _trained()
    fastcnn.save(model, tmp_path / "m.fcnn")
    with np.load(tmp_path / "m.fcnn", allow_pickle=False) as archive:
        np.testing.assert_array_equal(archive["model/0.weight"], model.state_dict()["0.weight"])


def test_failed_save_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    model, *_ = _trained()
    path = tmp_path / "m.fcnn"
    fastcnn.save(model, path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        fastcnn.save(model, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.fcnn"]


def test_damaged_and_foreign_files(tmp_path):
    model, *_ = _trained()
    good = tmp_path / "m.fcnn"
    fastcnn.save(model, good)
    truncated = tmp_path / "truncated.fcnn"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.fcnn: not a fastcnn checkpoint"):
        fastcnn.load(truncated)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a fastcnn checkpoint"):
        fastcnn.load(text)
    foreign = tmp_path / "other.npz"
    np.savez(foreign, a=np.zeros(3))
    with pytest.raises(ValueError, match=r"no __fastcnn__ header"):
        fastcnn.load(foreign)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, __fastcnn__=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a fastcnn checkpoint"):
        fastcnn.load(pickled)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        fastcnn.load(tmp_path / "missing.fcnn")


def test_saved_files_get_the_usual_permissions(tmp_path):
    model, *_ = _trained()
    fastcnn.save(model, tmp_path / "m.fcnn")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "m.fcnn").stat().st_mode & 0o777 == 0o666 & ~mask
