"""The trainer: exact resume after a crash or Ctrl-C, atomic checkpoints, keep-last/best, logs, configs, CLI."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch

import semask.train.checkpoint as ckpt_mod
from semask.cli import main
from semask.train import TrainConfig, Trainer, load_config
from semask.train.checkpoint import atomic_save, list_checkpoints, load_checkpoint
from semask.train.trainer import evaluate_checkpoint
from tests._trainkit import one_thread, tiny_config, tiny_data  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """One uninterrupted 6-iteration run (checkpoints every 2, evaluation every 3)."""
    out = tmp_path_factory.mktemp("ref")
    trainer = Trainer(tiny_config(data_root, out), progress=False)
    metrics = trainer.fit()
    return out, trainer, metrics


def _losses(out: Path) -> list[tuple[int, float]]:
    recs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [(r["iter"], r["loss"]) for r in recs if "loss" in r]


def _evaluations(out: Path) -> list[tuple[int, float]]:
    recs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [(r["iter"], r["mIoU"]) for r in recs if "mIoU" in r]


def test_run_writes_logs_curves_checkpoints_and_weights(reference):
    out, trainer, metrics = reference
    assert [i for i, _ in _losses(out)] == [1, 2, 3, 4, 5, 6]
    assert 0 <= metrics["mIoU"] <= 1 and set(metrics["IoU"]) == set(trainer.train_set.classes)
    assert [i for i, _ in list_checkpoints(out / "checkpoints")] == [4, 6]  # keep_last=2
    assert (out / "checkpoints" / "best.pt").is_file() and (out / "curves.png").stat().st_size > 1000
    assert not list((out / "checkpoints").glob(".*tmp*"))
    evals = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if "mIoU" in x]
    assert [e["iter"] for e in evals] == [3, 6]
    from safetensors.torch import load_file

    saved = load_file(out / "final" / "model.safetensors")
    assert torch.equal(saved["decode_head.conv_seg.weight"], trainer.module.state_dict()["decode_head.conv_seg.weight"])
    assert json.loads((out / "final" / "config.json").read_text())["num_classes"] == 5


def test_final_weights_predict_as_evaluated(reference, data_root, tmp_path):
    """out_dir/final records the classes and preprocessing of the run: `semask segment --model local-dir:...`
    writes exactly the labels the evaluation scored (the run's test scale, mean/std, class table)."""
    import numpy as np
    from PIL import Image

    from semask.infer import Predictor
    from semask.train.evaluate import eval_predictor

    out, trainer, _ = reference
    d = trainer.cfg.data
    p = Predictor(f"local-dir:{out / 'final'}")
    assert p.classes.names == trainer.train_set.classes and p.test_scale is None and p.classes.label_offset == 0
    image = trainer.val_set.load(0)["image"]
    scored = eval_predictor(trainer.module, test_scale=d.test_scale, crop_size=d.crop_size, mean=d.mean, std=d.std,
                            classes=trainer.val_set.class_info)(image)
    Image.fromarray(image).save(tmp_path / "img.png")
    assert main(["segment", str(tmp_path / "img.png"), "--model", f"local-dir:{out / 'final'}",
                 "--out", str(tmp_path / "seg")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "seg" / "img.png")), scored.labels)


class _Crash(RuntimeError):
    pass


def test_resume_after_crash_is_exact(data_root, reference, tmp_path):
    ref_out, ref_trainer, _ = reference

    def crash_at_5(trainer, rec):
        if rec["iter"] == 5:  # dies after iteration 5; the last checkpoint is iteration 4
            raise _Crash

    with pytest.raises(_Crash):
        Trainer(tiny_config(data_root, tmp_path), progress=False, callbacks=[crash_at_5]).fit()
    resumed = Trainer(tiny_config(data_root, tmp_path), progress=False)
    assert resumed.iteration == 4
    resumed.fit()
    assert _losses(tmp_path) == _losses(ref_out)  # bit-identical loss sequence, no duplicated iteration 5
    for (k, a), b in zip(ref_trainer.module.state_dict().items(), resumed.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_ctrl_c_saves_and_resumes_exactly(data_root, reference, tmp_path):
    ref_out, ref_trainer, _ = reference
    def ctrl_c_at_3(trainer, rec):
        if rec["iter"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the trainer's handler: finish the iteration, save, stop

    # Whatever SIGINT did before (a background or nohup'ed pytest inherits SIG_IGN, not the default handler).
    before = signal.getsignal(signal.SIGINT)
    first = Trainer(tiny_config(data_root, tmp_path), progress=False, callbacks=[ctrl_c_at_3])
    first.fit()
    assert first.iteration == 3 and (tmp_path / "checkpoints" / "iter_0000003.pt").is_file()
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    assert not (tmp_path / "final").exists()  # an interrupted run writes no final weights
    second = Trainer(tiny_config(data_root, tmp_path), progress=False)
    second.fit()
    assert _losses(tmp_path) == _losses(ref_out)
    # the stop skipped the evaluation due at 3 (the checkpoint comes first); the resumed run made it up
    assert _evaluations(tmp_path) == _evaluations(ref_out) and [i for i, _ in _evaluations(ref_out)] == [3, 6]
    assert all(torch.equal(a, b) for a, b in zip(ref_trainer.module.state_dict().values(),
                                                 second.module.state_dict().values(), strict=True))


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "iter_0000001.pt"
    atomic_save({"model": {"w": torch.ones(2)}}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"model": {"w": torch.zeros(2)}}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    (tmp_path / "trunc.pt").write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*trunc\.pt"):
        load_checkpoint(tmp_path / "trunc.pt")


def test_gradient_accumulation_and_bf16_autocast_run(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path, iters=2, accum_steps=2, amp="bf16", clip_grad=1.0,
                      grad_checkpointing=True, norm_eval=True, eval_interval=100, resume=None)
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    assert trainer.iteration == 2 and all(torch.isfinite(p).all() for p in trainer.module.parameters())
    with pytest.raises(ValueError, match="needs CUDA"):
        Trainer(tiny_config(data_root, tmp_path, amp="fp16"), progress=False)


def test_model_with_wrong_class_count_is_refused(data_root, tmp_path):
    import semask

    model = semask.create_model("test_semask_swin_fpn", num_classes=7)
    with pytest.raises(ValueError, match=r"7 classes but .* has 5"):
        Trainer(tiny_config(data_root, tmp_path), model=model, progress=False)


def test_config_overrides_and_presets(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model: test_semask_swin_fpn\nlr: 1e-4\ndata:\n  type: folder\n  crop_size: [64, 64]\n")
    cfg = load_config(cfg_file, ["iters=10", "data.root=/x", "clip_grad=0.5", "amp=bf16", "data.ratios=null"])
    assert (cfg.lr, cfg.iters, cfg.clip_grad, cfg.amp) == (1e-4, 10, 0.5, "bf16")
    assert cfg.data.crop_size == (64, 64) and cfg.data.root == "/x" and cfg.data.ratios is None
    with pytest.raises(ValueError, match="unknown config key.*'lrr'"):
        load_config(cfg_file, ["lrr=1"])
    with pytest.raises(ValueError, match="not key=value"):
        load_config(cfg_file, ["iters"])
    presets = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(presets) >= 4
    for preset in presets:  # the SeMask-FPN schedule (each preset's whole recipe: test_presets_set_the_recipe...)
        c = load_config(preset)
        if "_fpn" in c.model:
            assert c.warmup_iters == 1500 and c.poly_power == 1.0 and c.prior_loss_weight == 0.4 and c.iters == 80000
    ade = load_config(ROOT / "configs" / "ade20k_semask_tiny.yaml")
    assert (ade.lr, ade.weight_decay, ade.data.cat_max_ratio, ade.data.ratios) == \
        (1e-4, 1e-4, 0.75, (0.5, 0.75, 1.0, 1.25, 1.5, 1.75))
    city = load_config(ROOT / "configs" / "cityscapes_semask_base.yaml")
    assert (city.lr, city.weight_decay, city.data.ratio_range, city.data.crop_size) == (1e-3, 0.05, (0.5, 2.0),
                                                                                        (768, 768))


def test_config_type_and_range_errors_name_the_key():
    for override, message in [("data.crop_size=64", r"data\.crop_size must be a list of 2 ints, got 64 "
                                                     r"\(e\.g\. data\.crop_size=\[512,512\]\)"),
                              ("iters=abc", "iters must be int, got 'abc'"),
                              ("batch_size=0", "batch_size must be >= 1"),
                              ("betas=[0.9]", "betas must be a list of 2 floats"),
                              ("amp=fp32", r"amp must be one of \['no', 'bf16', 'fp16'\]"),
                              ("data.type=voc", "data.type must be one of"),
                              ("data.crop_size=[0,8]", "positive sizes"),
                              ("eval_crop=abc", "eval_crop must be int or a list of 2 ints or null"),
                              # values that train wrongly, or fail only at the end of the run
                              ("clip_grad=-1.0", r"clip_grad must be > 0 or null \(no clipping\), got -1\.0"),
                              ("clip_grad=0", r"clip_grad must be > 0 or null"),
                              ("poly_power=-1", "poly_power must be >= 0, got -1.0"),
                              ("ohem_min_kept=-5", r"ohem_min_kept must be >= 1 or null \(no OHEM\), got -5"),
                              ("warmup_ratio=5", r"warmup_ratio must be in \[0, 1\], got 5\.0"),
                              ("weight_decay=-0.1", "weight_decay must be >= 0"),
                              ("prior_loss_weight=-1", "prior_loss_weight must be >= 0"),
                              ("lr=.nan", "lr must be > 0, got nan"),
                              ("data.flip=2", r"data\.flip must be in \[0, 1\]")]:
        with pytest.raises(ValueError, match=message):
            load_config(None, [override])
    cfg = load_config(None, ["iters=1e4", "lr=2e-4", "eval_crop=512", "data.train_split=2017", "clip_grad=null",
                             "grad_checkpointing=yes", "data.ratio_range=[0.5, 2]", "ohem_min_kept=100000",
                             "poly_power=0", "warmup_ratio=1", "weight_decay=0", "prior_loss_weight=0"])
    assert (cfg.iters, cfg.lr, cfg.eval_crop, cfg.data.train_split, cfg.clip_grad, cfg.grad_checkpointing,
            cfg.data.ratio_range, cfg.ohem_min_kept) == (10000, 2e-4, 512, "2017", None, True, (0.5, 2.0), 100000)
    assert main(["train", "batch_size=0"]) == 2  # the CLI reports it, nothing is built


def test_folder_splits_default_to_the_layout(data_root, tmp_path, caplog):
    """images/{train,val} with no splits set: train on train, evaluate on val (never on all of images/)."""
    cfg = tiny_config(data_root, tmp_path)
    cfg.data.train_split = cfg.data.val_split = None
    trainer = Trainer(cfg, progress=False)
    assert (len(trainer.train_set), len(trainer.val_set)) == (8, 4)
    metrics, dataset = evaluate_checkpoint(cfg, _final_weights(trainer, tmp_path))
    assert len(dataset) == 4 and "mIoU" in metrics
    # a flat folder has no validation split: training says so (no evaluation, no best.pt)
    flat = tmp_path / "flat"
    for sub in ("images", "masks"):
        (flat / sub).mkdir(parents=True)
        for f in sorted((data_root / sub / "train").iterdir())[:2]:
            (flat / sub / f.name).write_bytes(f.read_bytes())
    (flat / "classes.txt").write_text((data_root / "classes.txt").read_text())
    cfg.data.root = str(flat)
    with caplog.at_level("WARNING", logger="semask.train.trainer"):
        trainer = Trainer(cfg, progress=False)
    assert trainer.val_set is None and "no best.pt" in caplog.text


def _final_weights(trainer: Trainer, tmp_path: Path) -> Path:
    import semask

    semask.save_pretrained(trainer.module, tmp_path / "w")
    return tmp_path / "w"


def test_cli_train_then_eval(data_root, tmp_path, capsys):
    cfg = tiny_config(data_root, tmp_path / "run", iters=2, eval_interval=100)
    cfg_file = tmp_path / "tiny.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    assert main(["train", "--config", str(cfg_file), "iters=2"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "curves.png" in out
    ckpt = tmp_path / "run" / "checkpoints" / "iter_0000002.pt"
    assert main(["eval", "--config", str(cfg_file), "--checkpoint", str(ckpt), "--json", str(tmp_path / "m.json")]) == 0
    assert "aAcc" in capsys.readouterr().out and "mIoU" in json.loads((tmp_path / "m.json").read_text())
    assert main(["eval", "--config", str(cfg_file), "--checkpoint", str(tmp_path / "run" / "final")]) == 0
    assert main(["train", "--config", str(cfg_file), "data.root=" + str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_fresh_run_refuses_an_earlier_runs_checkpoints(data_root, reference, tmp_path, capsys, caplog):
    """resume=null beside another run's iter_*.pt: keep_last would prune the new run's checkpoints (they sort below
    the old ones) and a later resume=auto would continue the old run, so it is refused, naming both fixes."""
    ref_out, _, _ = reference
    before = list_checkpoints(ref_out / "checkpoints")
    with pytest.raises(ValueError, match=r"checkpoints.* earlier run .*iteration 6.*resume=auto.*another out_dir"):
        Trainer(tiny_config(data_root, ref_out, resume=None), progress=False)
    cfg_file = tmp_path / "tiny.json"
    cfg_file.write_text(json.dumps(tiny_config(data_root, ref_out).to_dict()))
    assert main(["train", "--config", str(cfg_file), "resume=null"]) == 2  # the CLI reports it
    assert str(ref_out / "checkpoints") in capsys.readouterr().err
    assert list_checkpoints(ref_out / "checkpoints") == before  # nothing deleted
    # no checkpoints (only an earlier log): a fresh run starts its own log, the earlier one kept aside
    (tmp_path / "log.jsonl").write_text('{"iter": 1, "loss": 1.0}\n')
    with caplog.at_level("WARNING", logger="semask.train.trainer"):
        Trainer(tiny_config(data_root, tmp_path, resume=None), progress=False)
    assert "a fresh run" in caplog.text and (tmp_path / "log.previous.jsonl").is_file()


def test_resume_follows_the_current_configs_schedule(data_root, tmp_path, caplog):
    """Raising iters on resume trains the extra iterations on the new schedule (not at lr 0, as the checkpoint's
    PolyWarmup would give); a changed lr wins with a warning naming both values."""
    from semask.train.optim import build_optimizer, build_scheduler

    Trainer(tiny_config(data_root, tmp_path, iters=2, eval_interval=100), progress=False).fit()
    with caplog.at_level("WARNING", logger="semask.train.trainer"):
        changed = Trainer(tiny_config(data_root, tmp_path, iters=4, lr=2e-3), progress=False)
    assert "lr=0.001" in caplog.text and "lr=0.002" in caplog.text
    assert changed.optimizer.param_groups[0]["lr"] == 2e-3 * changed.scheduler.lr_lambdas[0](2)
    longer = Trainer(tiny_config(data_root, tmp_path, iters=4, eval_interval=100), progress=False)
    longer.fit()
    recs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    lrs = {r["iter"]: r["lr"] for r in recs if "lr" in r}
    fresh = build_scheduler(build_optimizer(torch.nn.Linear(1, 1), lr=1e-3, weight_decay=0.01), 4, warmup_iters=2)
    expected = []
    for _ in range(4):
        expected.append(fresh.get_last_lr()[0])  # the lr iteration i trains with, as the trainer logs it
        fresh.optimizer.step()
        fresh.step()
    assert [lrs[3], lrs[4]] == expected[2:] and lrs[3] > lrs[4] > 0  # iterations 1, 2 had the 2-iter schedule


def test_fit_of_a_finished_run_returns_its_last_evaluation(data_root, tmp_path, caplog):
    """Trainer(config).fit() run twice: the second trains nothing, says so, and returns the same metrics dict (the
    checkpoint keeps it); a checkpoint without it (an older one) is evaluated once."""
    cfg = dict(iters=2, eval_interval=2, ckpt_interval=2)
    first = Trainer(tiny_config(data_root, tmp_path, **cfg), progress=False).fit()
    with caplog.at_level("WARNING", logger="semask.train.trainer"):
        again = Trainer(tiny_config(data_root, tmp_path, **cfg), progress=False)
        second = again.fit()
    assert "already complete at iteration 2" in caplog.text and "raise iters=" in caplog.text
    assert json.dumps(second, sort_keys=True) == json.dumps(first, sort_keys=True) and "mIoU" in second
    assert again.iteration == 2 and [i for i, _ in _losses(tmp_path)] == [1, 2]  # nothing trained or logged
    path = tmp_path / "checkpoints" / "iter_0000002.pt"
    old = load_checkpoint(path)
    del old["last_eval"]
    atomic_save(old, path)
    third = Trainer(tiny_config(data_root, tmp_path, **cfg), progress=False).fit()
    assert json.dumps(third, sort_keys=True) == json.dumps(first, sort_keys=True)


def test_resume_refuses_another_models_checkpoint(data_root, reference):
    """An out_dir trained with another model (or other shapes): a ValueError naming both, not load_state_dict's
    hundreds of "Unexpected key(s)" lines."""
    ref_out, _, _ = reference
    ckpt = str(ref_out / "checkpoints" / "iter_0000006.pt")
    with pytest.raises(ValueError, match=r"iter_0000006\.pt is for another model: it was trained with model="
                                         r"test_semask_swin_fpn, this run builds model=test_semask_swin_fpn_global "
                                         r".*another out_dir.*resume=null") as err:
        Trainer(tiny_config(data_root, ref_out, model="test_semask_swin_fpn_global"), progress=False)
    assert len(str(err.value)) < 1500
    wider = dict(tiny_config(data_root, ref_out).model_overrides, embed_dim=16)
    with pytest.raises(ValueError, match=r"another model.*embed_dim': 16.*tensor\(s\) differ"):
        Trainer(tiny_config(data_root, ref_out, model_overrides=wider, resume=ckpt), progress=False)


def test_eval_and_resume_refuse_another_semantic_layout(data_root, reference, tmp_path):
    """Fields no tensor shows (semantic layout / window, heads) still make another model: a checkpoint trained with
    other ones is refused naming them, from its recorded `model_config`, or for older checkpoints from its name and
    model_overrides."""
    ref_out, _, _ = reference
    ckpt_path = ref_out / "checkpoints" / "iter_0000006.pt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert ckpt["model_config"]["semantic_attention"] == ["window"] * 4
    other = dict(tiny_config(data_root, ref_out).model_overrides, semantic_attention=("window",) * 3 + ("global",))
    cfg = tiny_config(data_root, tmp_path, model_overrides=other)
    why = (r"another model: .* \(the tensors match but semantic_attention \('window', 'window', 'window', "
           r"'window'\) vs \('window', 'window', 'window', 'global'\): the same weights compute other outputs\)")
    with pytest.raises(ValueError, match=why):
        evaluate_checkpoint(cfg, ckpt_path)
    del ckpt["model_config"]  # as written before it was kept
    atomic_save(ckpt, tmp_path / "older.pt")
    with pytest.raises(ValueError, match=why):
        evaluate_checkpoint(cfg, tmp_path / "older.pt")
    with pytest.raises(ValueError, match=why):
        Trainer(tiny_config(data_root, ref_out, model_overrides=other, resume=str(ckpt_path)), progress=False)


def test_presets_set_the_recipe_the_manifest_records():
    """Every configs/*.yaml is a valid config whose optimiser / schedule / loss settings are the original recipe
    of its model's tag (the trainer's warning names the differences for configs that are not)."""
    from types import SimpleNamespace

    from semask.registry import get_config
    from semask.train.config import config_from_dict, read_config_file
    from semask.train.trainer import recipe_differences

    presets = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(presets) >= 10
    for path in presets:
        cfg = config_from_dict(read_config_file(path))
        tag, diffs = recipe_differences(cfg, SimpleNamespace(config=get_config(cfg.model)))
        assert tag == cfg.model and diffs == {}, (path.name, diffs)


def test_default_recipe_on_a_mask_model_is_named(caplog):
    """A run of Mask2Former with the trainer's defaults (SeMask-FPN's recipe) says which settings differ from
    the original's."""
    from types import SimpleNamespace

    from semask.registry import get_config
    from semask.train.trainer import _warn_recipe, recipe_differences

    cfg = TrainConfig(model="semask_swin_large_mask2former")
    model = SimpleNamespace(config=get_config("semask_swin_large_mask2former.ade20k"))
    tag, diffs = recipe_differences(cfg, model)
    assert tag == "semask_swin_large_mask2former.ade20k"
    assert diffs == {"weight_decay": (0.05, 1e-4), "warmup_iters": (0, 1500), "poly_power": (0.9, 1.0),
                     "clip_grad": (0.01, None), "backbone_lr_mult": (0.1, 1.0),
                     "data.crop_size": ((640, 640), (512, 512)), "data.test_scale": ((2560, 640), (2048, 512))}
    with caplog.at_level("WARNING"):
        _warn_recipe(cfg, model)
    assert "was trained with weight_decay=0.05, warmup_iters=0" in caplog.text and "presets" in caplog.text
    assert recipe_differences(TrainConfig(model="test_semask_swin_fpn"), model) == (None, {})


def test_lr_multipliers_train_and_resume(data_root, tmp_path, caplog):
    """backbone_lr_mult scales the backbone groups' lr through the schedule; the log shows the config's lr, and a
    resume keeps the multipliers bit-exactly."""
    cfg = tiny_config(data_root, tmp_path, iters=4, backbone_lr_mult=0.5, eval_interval=100, ckpt_interval=2)
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    backbone = {id(p) for n, p in trainer.module.named_parameters() if n.startswith("backbone.")}
    for group in trainer.optimizer.param_groups:
        assert group["lr_mult"] == (0.5 if id(group["params"][0]) in backbone else 1.0)
        assert group["initial_lr"] == cfg.lr * group["lr_mult"]
    logged = [r["lr"] for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines()) if "lr" in r]
    assert logged[-1] == pytest.approx(cfg.lr * trainer.scheduler.lr_lambdas[0](3))
    again = Trainer(tiny_config(data_root, tmp_path, iters=6, backbone_lr_mult=0.5, eval_interval=100,
                                ckpt_interval=2), progress=False)  # resume=auto: from iteration 4, 2 more
    assert again.iteration == 4 and [g["lr_mult"] for g in again.optimizer.param_groups] == [
        g["lr_mult"] for g in trainer.optimizer.param_groups]
    assert [g["lr"] for g in again.optimizer.param_groups] == pytest.approx(
        [cfg.lr * g["lr_mult"] * again.scheduler.lr_lambdas[0](4) for g in again.optimizer.param_groups])
    # another multiplier (same groups): the config's wins, said as such, and the unchanged lr is not reported
    with caplog.at_level("INFO"):
        changed = Trainer(tiny_config(data_root, tmp_path, iters=6, backbone_lr_mult=0.25, eval_interval=100,
                                      ckpt_interval=2), progress=False)
    before = [g["lr_mult"] for g in trainer.optimizer.param_groups]
    after = [0.25 if m == 0.5 else m for m in before]
    assert f"lr multipliers: {before} -> {after}" in caplog.text and 0.5 in before
    assert "was trained with lr=" not in caplog.text
    assert [g["lr"] for g in changed.optimizer.param_groups] == pytest.approx(
        [cfg.lr * g["lr_mult"] * changed.scheduler.lr_lambdas[0](4) for g in changed.optimizer.param_groups])


def test_resume_into_fp16_from_a_run_without_it(data_root, reference, tmp_path, caplog):
    """A run without amp=fp16 saved a disabled GradScaler (empty state): resuming with fp16 starts a fresh scale
    instead of failing in GradScaler.load_state_dict."""
    ref_out, trainer, _ = reference
    ckpt = load_checkpoint(ref_out / "checkpoints" / "iter_0000006.pt")
    assert ckpt["scaler"] == {}
    scaler, trainer.scaler = trainer.scaler, torch.amp.GradScaler("cpu", enabled=True)  # amp=fp16's (on CUDA)
    try:
        with caplog.at_level("INFO"):
            trainer.load_state_dict(ckpt)  # the checkpoint of its own last iteration: nothing else changes
        assert "starting from a fresh one" in caplog.text and trainer.scaler.get_scale() == 2.0 ** 16
    finally:
        trainer.scaler = scaler


def test_resume_with_other_lr_multipliers_is_a_clear_error(data_root, reference):
    """Other multipliers split the parameters into other groups: the optimizer state cannot be restored."""
    ref_out, _, _ = reference
    with pytest.raises(ValueError, match="other parameter groups than this run's.*backbone_lr_mult"):
        Trainer(tiny_config(data_root, ref_out, backbone_lr_mult=0.5), progress=False)


def test_resume_from_an_older_checkpoint_refuses_to_mix_runs(data_root, reference, tmp_path):
    """resume=PATH behind newer iter_*.pt in out_dir: the resumed run would overwrite and prune them, so it is
    refused naming them and both fixes; with the newer files moved away it resumes from PATH."""
    import shutil

    ref_out, _, _ = reference
    shutil.copytree(ref_out / "checkpoints", tmp_path / "checkpoints")
    older = tmp_path / "checkpoints" / "iter_0000004.pt"
    with pytest.raises(ValueError, match=r"iteration 4.*newer checkpoints \(iter_0000006\.pt\).*resume=auto"):
        Trainer(tiny_config(data_root, tmp_path, resume=str(older)), progress=False)
    assert [i for i, _ in list_checkpoints(tmp_path / "checkpoints")] == [4, 6]  # nothing deleted
    assert Trainer(tiny_config(data_root, tmp_path, resume=str(tmp_path / "checkpoints" / "iter_0000006.pt")),
                   progress=False).iteration == 6  # the newest itself is fine
    (tmp_path / "checkpoints" / "iter_0000006.pt").rename(tmp_path / "iter_0000006.pt")
    assert Trainer(tiny_config(data_root, tmp_path, resume=str(older)), progress=False).iteration == 4


def _copy(data_root: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(data_root, tmp_path / "data"))


def _edit_mask(path: Path, edit) -> None:
    import numpy as np
    from PIL import Image

    mask = np.array(Image.open(path))
    Image.fromarray(edit(mask).astype(np.uint8)).save(path)


def test_bad_masks_fail_before_training_naming_every_file(data_root, tmp_path, capsys):
    """Every mask (training and validation) is checked when the trainer is built: one error names all bad files and
    the valid values, before anything is trained or written (not at the first evaluation, 8000 iterations in)."""
    import numpy as np

    data = _copy(data_root, tmp_path)
    _edit_mask(data / "masks" / "val" / "0001.png", lambda m: np.where(np.arange(m.size).reshape(m.shape) == 0, 9, m))
    _edit_mask(data / "masks" / "train" / "0002.png", lambda m: np.maximum(m, 7))
    _edit_mask(data / "masks" / "train" / "0005.png", lambda m: m[:20])
    cfg = tiny_config(data, tmp_path / "run", iters=8, eval_interval=4, ckpt_interval=4)
    with pytest.raises(ValueError, match=r"bad data \(nothing was trained\)") as err:
        Trainer(cfg, progress=False)
    text = str(err.value)
    assert "training data, folder dataset" in text and "2 of 8 image/mask pair(s) are bad" in text
    assert "validation data" in text and "1 of 4 image/mask pair(s) are bad" in text
    assert "valid mask values 0..4, 255 (255 = ignore)" in text
    assert re.search(r"train[/\\]0002\.png has label values \[7\]", text)
    assert re.search(r"val[/\\]0001\.png has label values \[9\]", text)
    assert re.search(r"image .*0005\.png is 32x32 \(WxH\) but mask .*0005\.png is 32x20", text)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    assert main(["train", "--config", str(cfg_file)]) == 2
    assert "0002.png has label values [7]" in capsys.readouterr().err


def test_checkpoint_is_saved_before_an_evaluation_that_fails(data_root, tmp_path):
    """Where a checkpoint and an evaluation fall on one iteration the checkpoint comes first: an evaluation that
    fails loses no training; the resumed run evaluates that iteration before going on, so its log (and losses) are
    the uninterrupted run's. A successful evaluation is saved into that checkpoint too (a resume need not repeat it)."""
    cfg = dict(iters=4, eval_interval=2, ckpt_interval=2)
    Trainer(tiny_config(data_root, tmp_path / "ref", **cfg), progress=False).fit()

    def broken_evaluation(*args, **kwargs):
        raise _Crash("evaluation failed")

    first = Trainer(tiny_config(data_root, tmp_path / "run", **cfg), progress=False)
    first.evaluate = broken_evaluation
    with pytest.raises(_Crash):
        first.fit()
    assert [i for i, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [2]
    Trainer(tiny_config(data_root, tmp_path / "run", **cfg), progress=False).fit()

    def log(out: Path) -> list[tuple]:
        recs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        return [(r["iter"], r.get("loss"), r.get("mIoU")) for r in recs]

    assert log(tmp_path / "run") == log(tmp_path / "ref")  # train 1, 2, eval 2, train 3, 4, eval 4: each once
    assert [r[0] for r in log(tmp_path / "run") if r[2] is not None] == [2, 4]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "iter_0000004.pt")["last_eval"]["iter"] == 4


def test_a_run_stopped_at_its_last_iteration_completes_when_run_again(data_root, tmp_path):
    """Ctrl-C in the last iteration: the checkpoint is saved, the final evaluation and weights are not; running the
    same config again evaluates once (logged and kept in the checkpoint) and writes the final weights."""
    def ctrl_c_at_2(trainer, rec):
        if rec["iter"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    cfg = dict(iters=2, eval_interval=2, ckpt_interval=2)
    first = Trainer(tiny_config(data_root, tmp_path, **cfg), progress=False, callbacks=[ctrl_c_at_2])
    assert first.fit() == {} and first.stopped and not (tmp_path / "final").exists()
    metrics = Trainer(tiny_config(data_root, tmp_path, **cfg), progress=False).fit()
    assert "mIoU" in metrics and (tmp_path / "final" / "model.safetensors").is_file()
    assert _evaluations(tmp_path) == [(2, metrics["mIoU"])]
    assert load_checkpoint(tmp_path / "checkpoints" / "iter_0000002.pt")["last_eval"]["iter"] == 2
    again = Trainer(tiny_config(data_root, tmp_path, **cfg), progress=False)
    again.evaluate = None  # the evaluation is kept: a third run does not repeat it
    assert json.dumps(again.fit(), sort_keys=True) == json.dumps(metrics, sort_keys=True)
    assert len(_evaluations(tmp_path)) == 1


def test_cli_ctrl_c_exits_130_without_claiming_final_weights(data_root, tmp_path, capsys, monkeypatch):
    """A run stopped by Ctrl-C is incomplete: the command fails (130 = 128 + SIGINT) and names no final weights."""
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps(tiny_config(data_root, tmp_path / "run").to_dict()))
    step = Trainer._optimizer_step

    def step_then_ctrl_c(self):
        step(self)
        os.kill(os.getpid(), signal.SIGINT)  # the trainer's handler: finish the iteration, save, stop

    monkeypatch.setattr(Trainer, "_optimizer_step", step_then_ctrl_c)
    assert main(["train", "--config", str(cfg_file)]) == 130
    out, err = capsys.readouterr()
    assert "weights:" not in out and "stopped at iteration 1 of 6: resume with the same command" in err
    assert not (tmp_path / "run" / "final").exists()
    assert (tmp_path / "run" / "checkpoints" / "iter_0000001.pt").is_file()
    monkeypatch.undo()
    assert main(["train", "--config", str(cfg_file)]) == 0
    assert f"weights: {tmp_path / 'run' / 'final'}" in capsys.readouterr().out


def test_trainer_starts_from_configured_weights(data_root, tmp_path, monkeypatch):
    """`pretrained` (bool or weights) and `pretrained_backbone` (bool or a file) as create_model takes them: the
    library's own hints (pretrained=True for a `*_init` tag, pretrained_backbone=/path/swin.pth) are valid configs."""
    import semask
    import semask.registry
    from tests._trainkit import TINY

    assert load_config(None, ["pretrained=true"]).pretrained is True
    assert load_config(None, ["pretrained=hf-hub:o/r@v1"]).pretrained == "hf-hub:o/r@v1"
    assert load_config(None, ["pretrained_backbone=/p/swin.pth"]).pretrained_backbone == "/p/swin.pth"
    with pytest.raises(ValueError, match="pretrained=True and pretrained_backbone=True exclude each other"):
        load_config(None, ["pretrained=true", "pretrained_backbone=true"])
    # whole-model weights: a weights folder
    source = semask.create_model("test_semask_swin_fpn", num_classes=5, **TINY)
    semask.save_pretrained(source, tmp_path / "w")
    trainer = Trainer(tiny_config(data_root, tmp_path / "a", pretrained=str(tmp_path / "w")), progress=False)
    for k, v in source.state_dict().items():
        assert torch.equal(trainer.module.state_dict()[k], v), k
    # an ImageNet backbone: a timm-layout Swin file
    from safetensors.torch import save_file
    from timm.models.swin_transformer import SwinTransformer

    swin = SwinTransformer(img_size=32, embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4)
    save_file(swin.state_dict(), tmp_path / "swin.safetensors")
    trainer = Trainer(tiny_config(data_root, tmp_path / "b", pretrained_backbone=str(tmp_path / "swin.safetensors")),
                      progress=False)
    assert torch.equal(trainer.module.backbone.patch_embed.proj.weight, swin.patch_embed.proj.weight)
    # pretrained=True reaches create_model as True (the tag's published weights; offline here, so stop there)
    seen = {}

    def spy(name, **kwargs):
        seen.update(kwargs, name=name)
        raise _Crash

    monkeypatch.setattr(semask.registry, "create_model", spy)
    with pytest.raises(_Crash):
        Trainer(tiny_config(data_root, tmp_path / "c", model="test_semask_swin_fpn.x_init", pretrained=True),
                progress=False)
    assert seen["name"] == "test_semask_swin_fpn.x_init" and seen["pretrained"] is True
    assert seen["pretrained_backbone"] is False and seen["num_classes"] == 5


def test_eval_of_another_models_checkpoint_is_a_clear_error(data_root, reference, tmp_path, capsys):
    """`semask eval --checkpoint` of a run with another model: one line naming both models, not a traceback."""
    ref_out, _, _ = reference
    ckpt = ref_out / "checkpoints" / "iter_0000006.pt"
    cfg = tiny_config(data_root, tmp_path, model="test_semask_swin_fpn_global")
    with pytest.raises(ValueError, match=r"iter_0000006\.pt is for another model: it was trained with model="
                                         r"test_semask_swin_fpn, this config builds model=test_semask_swin_fpn_global"
                                         r".*Evaluate it with the config it was trained with"):
        evaluate_checkpoint(cfg, ckpt)
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    assert main(["eval", "--config", str(cfg_file), "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "is for another model" in err and "Traceback" not in err and len(err) < 1500
    # a bare {"model": state_dict} (no recorded config) of the right model evaluates: the tensors decide
    _, trainer, _ = reference
    atomic_save({"model": trainer.module.state_dict()}, tmp_path / "plain.pt")
    assert "mIoU" in evaluate_checkpoint(tiny_config(data_root, tmp_path), tmp_path / "plain.pt")[0]


def test_resume_after_the_class_list_changed_names_both_counts(data_root, reference, tmp_path):
    """The dataset lost classes since the checkpoint was written: the error says 5 classes vs 3 (not 'trained with
    model=X, this run builds model=X')."""
    import shutil

    ref_out, _, _ = reference
    data = _copy(data_root, tmp_path)
    (data / "classes.txt").write_text("background\nstriped disc\nsquare\n")
    for mask in (data / "masks").rglob("*.png"):
        _edit_mask(mask, lambda m: m.clip(0, 2))
    shutil.copytree(ref_out / "checkpoints", tmp_path / "run" / "checkpoints")
    with pytest.raises(ValueError, match=r"iter_0000006\.pt is for another dataset: it has 5 classes \['background', "
                                         r"'striped disc', .*\] but folder dataset .* has 3 \['background', 'striped "
                                         r"disc', 'square'\]\. Restore that class list to resume"):
        Trainer(tiny_config(data, tmp_path / "run"), progress=False)
    old = load_checkpoint(tmp_path / "run" / "checkpoints" / "iter_0000006.pt")
    del old["classes"]  # a checkpoint from before the class list was kept
    atomic_save(old, tmp_path / "run" / "checkpoints" / "iter_0000006.pt")
    with pytest.raises(ValueError, match=r"tensor\(s\) differ.*has 3 classes: was it trained on another class list"):
        Trainer(tiny_config(data, tmp_path / "run"), progress=False)


def test_cli_reports_a_loader_workers_error_by_its_message(data_root, tmp_path, capsys):
    """An error in a DataLoader worker (a truncated image: its header reads, its pixels do not) is reported by its
    own message, not as 'Caught ValueError in DataLoader worker process 0. Original Traceback ...'."""
    data = _copy(data_root, tmp_path)
    for image in (data / "images" / "train").iterdir():
        image.write_bytes(image.read_bytes()[:200])
    cfg = tiny_config(data, tmp_path / "run")
    cfg.data.num_workers = 1
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    assert main(["train", "--config", str(cfg_file)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"semask train: error: cannot read image .*\.png", err), err
    assert "DataLoader worker" not in err and "Traceback" not in err


def test_config_file_and_override_syntax_errors_name_the_source(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: test_semask_swin_fpn\niters: [1\n")
    with pytest.raises(ValueError, match=r"config file .*bad\.yaml is not valid YAML: line 3, column 1: expected ',' "
                                         r"or '\]'.*\(while parsing a flow sequence at line 2, column 8\)"):
        load_config(bad)
    with pytest.raises(ValueError, match=r"override 'data\.crop_size=\[32,': the value is not valid YAML"):
        load_config(None, ["data.crop_size=[32,"])
    (tmp_path / "bad.json").write_text('{"iters": }')
    with pytest.raises(ValueError, match=r"config file .*bad\.json is not valid JSON: Expecting value: line 1"):
        load_config(tmp_path / "bad.json")
    assert main(["train", "--config", str(bad)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_data_root_missing_or_unset_is_named(data_root, tmp_path):
    cfg = tiny_config(tmp_path / "nowhere", tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"data\.root '.*nowhere' does not exist"):
        Trainer(cfg, progress=False)
    cfg.data.root = ""
    with pytest.raises(ValueError, match=r"data\.root is not set \(pass data\.root=FOLDER"):
        Trainer(cfg, progress=False)
    with pytest.raises(ValueError, match=r"data\.root is not set"):
        evaluate_checkpoint(cfg, tmp_path / "x.pt")
