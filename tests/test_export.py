"""Deployment: torch.export and ONNX programs with dynamic H/W reproduce PyTorch at sizes not seen at export;
the backbone compiles with fullgraph=True (no graph breaks); an ONNX file from `semask export` carries what a
runtime needs to segment an image as the Predictor does (examples/onnx_segment.py, no torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

import semask
from semask.cli import main
from semask.export import export_program, min_input_size
from semask.hub import save_pretrained

from .conftest import perturb_weights, randomize_gammas

EXAMPLE = (256, 320)  # traced size; the checks below use other sizes
SIZES = [(240, 300), (333, 250)]


@pytest.fixture(scope="module", params=["test_semask_swin_fpn", "test_semask_mit_segformer", "test_mit_segformer"])
def model(request):
    """The FPN and the SegFormer families (SeMask-MiT and plain SegFormer, whose min_input_size was once 33: below
    the tracer's guard of 61, so it could not be exported at all)."""
    torch.manual_seed(0)
    m = semask.create_model(request.param).eval()
    randomize_gammas(m)  # the semantic attention must matter for the comparison
    return m


@pytest.fixture(scope="module")
def program(model):
    return export_program(model, example_size=EXAMPLE)


def _reference(model, x):
    with torch.no_grad():
        out = model(x)
    return [out[k] for k in ("logits", "prior_logits") if k in out]


def _below_program_min(model) -> list[tuple[int, int]]:
    """Elongated sizes under the .pt2 program's min_size that eager PyTorch takes (MiT: from its 29 px)."""
    side = max(12, getattr(model.backbone, "min_size", 1))
    return [(side, 300), (300, side)]


def _onnxruntime():
    """onnxruntime, once the export dependencies are known to be installed (the `export` extra)."""
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (pip install semask[export])")
    return pytest.importorskip("onnxruntime", reason="the ONNX check needs onnxruntime (pip install semask[export])")


def _check_program(program, model):
    """The exported program reproduces eager PyTorch within 1e-4 at SIZES (none of them the traced size) and at its
    smallest size."""
    low = min_input_size(model)
    for size in SIZES + [(low, low + 7)]:
        x = torch.randn(1, 3, *size)
        got = program.module()(x)
        assert got[0].shape == (1, 5, *size)
        for a, b in zip(got, _reference(model, x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def _check_onnx(program, model, path):
    """The program's ONNX file (opset >= 17), run by onnxruntime, reproduces eager PyTorch within 1e-4 at SIZES and
    at elongated sizes under the .pt2 program's min_size: the ONNX graph has no shape guard (onnx_segment.py relies
    on it instead of padding)."""
    ort = _onnxruntime()
    import onnx

    from semask.export import export_onnx

    export_onnx(program, path)
    proto = onnx.load(str(path), load_external_data=False)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = ["logits", "prior_logits"] if model.config.semantic else ["logits"]
    assert [o.name for o in session.get_outputs()] == names
    for size in SIZES + _below_program_min(model):
        x = torch.randn(1, 3, *size)
        got = session.run(None, {"images": x.numpy()})
        for a, b in zip(got, _reference(model, x), strict=True):
            torch.testing.assert_close(torch.from_numpy(a), b, atol=1e-4, rtol=0)


def test_torch_export_dynamic_shapes(model, program):
    if model.config.backbone == "swin":
        assert not model.backbone.layers[0].blocks[1].attn._bias_cache  # traced through the cache-free path
    assert min_input_size(model) == (225 if model.config.backbone == "swin" else 61)
    _check_program(program, model)


@pytest.mark.parametrize("arch", ["test_semask_swin_fpn_global", "test_mit_segformer"])
def test_min_input_size_is_the_tracers_bound(arch):
    """min_input_size is exact: a program exported down to it runs there; one side less fails, at export (MiT: the
    key/value reduction of stage 0 must keep 2 tokens) or at run time (Swin: window 4 must leave 2 windows at stride
    32, the semantic layers' window 5 at stride 8: 129, not 32 x max(windows) + 1 = 161)."""
    torch.manual_seed(0)
    model = semask.create_model(arch).eval()
    low = min_input_size(model)
    assert low == {"test_semask_swin_fpn_global": 129, "test_mit_segformer": 61}[arch]
    x = torch.randn(1, 3, low, low + 50)
    torch.testing.assert_close(export_program(model, example_size=EXAMPLE).module()(x)[0], _reference(model, x)[0],
                               atol=1e-4, rtol=0)
    with pytest.raises(RuntimeError):  # torch's UserError (a constraint violation) or its runtime assertion
        export_program(model, example_size=EXAMPLE, min_size=low - 1).module()(torch.randn(1, 3, low - 1, low + 50))


def test_onnx_export_with_onnxruntime(model, program, tmp_path):
    _check_onnx(program, model, tmp_path / "model.onnx")


def test_compile_fullgraph_backbone_has_no_graph_breaks(model):
    # backend="eager" runs Dynamo's graph capture (where breaks would raise) without the slow Inductor codegen.
    compiled = torch.compile(model.backbone, fullgraph=True, backend="eager", dynamic=False)
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        feats, priors = compiled(x)
        ref_feats, ref_priors = model.backbone(x)
    for a, b in zip(feats + priors, ref_feats + ref_priors, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# The mask-classification family: MaskFormer (FPN pixel decoder, DETR decoder), Mask2Former (deformable-attention
# pixel decoder, masked decoder) and both FaPN variants (deformable convolutions in the pixel decoder).
MASK_ARCHS = ["test_semask_maskformer", "test_semask_mask2former", "test_semask_fapn_mask2former",
              "test_semask_msfapn_mask2former"]
# ONNX for the two that hold every piece between them (FPN and deformable pixel decoders, FeatureAlign, both
# transformer decoders): an ONNX conversion takes ~30 s each here.
MASK_ONNX = ["test_semask_maskformer", "test_semask_msfapn_mask2former"]


@pytest.fixture(scope="module", params=MASK_ARCHS)
def mask_model(request):
    """Weights moved off their init: the deformable offsets and attention weights start at exactly 0, which would
    leave every sampling point on the pixel grid and hide a wrong traced sampling path."""
    torch.manual_seed(0)
    m = semask.create_model(request.param).eval()
    perturb_weights(m)
    randomize_gammas(m)
    return m


@pytest.fixture(scope="module")
def mask_program(mask_model):
    return export_program(mask_model, example_size=EXAMPLE)


def test_mask_classification_torch_export_dynamic_shapes(mask_model, mask_program):
    """Padded to a multiple of 32 and cropped back at sizes that pad differently from the example (256 x 320 needs
    no padding); eager runs torchvision's deformable convolution, the program the pure-PyTorch one."""
    assert min_input_size(mask_model) == 225
    _check_program(mask_program, mask_model)
    nodes = {str(n.target) for n in mask_program.graph.nodes if n.op == "call_function"}
    assert not any(t.startswith("torchvision") for t in nodes)  # portable: no torchvision op in the program


@pytest.mark.parametrize("mask_model", MASK_ONNX, indirect=True)
def test_mask_classification_onnx_export_with_onnxruntime(mask_model, mask_program, tmp_path):
    _check_onnx(mask_program, mask_model, tmp_path / "model.onnx")


@pytest.mark.parametrize("arch", ["test_semask_swin_fpn", "test_semask_mit_segformer"])
def test_cli_onnx_file_segments_like_the_predictor_without_torch(tmp_path, arch):
    """`semask export` writes the deployment metadata; examples/onnx_segment.py follows it with numpy, Pillow and
    onnxruntime alone and writes the Predictor's labels (in the dataset's ids) at the original size: also for
    elongated images that resize below the .pt2 program's min_size (run unpadded: the ONNX graph has no guard; MiT
    pads below 29 px as the Predictor does) and for 16-bit PNGs (scaled /257 as the Predictor, not clipped)."""
    ort = _onnxruntime()
    torch.manual_seed(0)
    model = semask.create_model(arch).eval()
    randomize_gammas(model)
    weights = save_pretrained(model, tmp_path / "weights")
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", arch, str(onnx_path), "--weights", str(weights), "--size", "256x320"]) == 0

    meta = json.loads(ort.InferenceSession(str(onnx_path)).get_modelmeta().custom_metadata_map["semask"])
    predictor = semask.Predictor(model)
    assert (meta["arch"], meta["num_classes"], meta["label_offset"]) == (arch, 5, 0)
    assert meta["input"]["min_size"] == min_input_size(model) and meta["input"]["test_scale"] == list(
        predictor.test_scale)
    assert meta["input"]["pad_to_min"] == (29 if "mit" in arch else 1) == predictor.min_side
    for key in ("mean", "std"):
        assert np.allclose(meta["input"][key], getattr(predictor, key).flatten(), rtol=0, atol=1e-5)
    assert meta["class_names"] == list(predictor.classes.names)

    rng = np.random.default_rng(0)
    script = Path(__file__).resolve().parents[1] / "examples" / "onnx_segment.py"
    # resized up to 512 x 640, down to 717 x 512, and to 103 x 2048 / 12 x 2048 (aspect 20:1 and 167:1)
    for h, w in [(240, 300), (700, 500), (20, 400), (3, 500)]:
        noise = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))
        image = tmp_path / f"{h}x{w}.png"
        noise.filter(ImageFilter.GaussianBlur(min(6, h / 4))).save(image)  # regions, not per-pixel noise
        grey16 = tmp_path / f"{h}x{w}_16.png"
        Image.fromarray((np.asarray(noise.convert("L"), np.uint16) * 257 - rng.integers(0, 128, (h, w))).astype(
            np.uint16)).save(grey16)  # 16-bit: Pillow's convert("RGB") would clip it to white
        for path in (image, grey16) if h == 240 else (image,):
            out = tmp_path / f"{path.stem}_labels.png"
            subprocess.run([sys.executable, str(script), str(onnx_path), str(path), "--out", str(out)], check=True,
                           capture_output=True, text=True)
            got = np.asarray(Image.open(out))
            ref = predictor(path).labels
            assert got.shape == (h, w)
            assert (got == ref).mean() > 0.999, (path.name, (got == ref).mean())  # two runtimes: a near-tie may flip


def test_example_size_outside_the_program_range_is_a_clear_error(tmp_path, capsys):
    model = semask.create_model("test_swin_fpn")
    with pytest.raises(ValueError, match=r"within \[225, 8192\].*--size 512"):
        export_program(model, example_size=(128, 300))
    assert main(["export", "test_swin_fpn", str(tmp_path / "m.onnx"), "--size", "128"]) == 2
    assert "trace at 512x512" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_dataset_errors(tmp_path, capsys):
    """--dataset is ONNX metadata: refused for .pt2 programs; an unknown or misfitting table is a one-line error."""
    assert main(["export", "test_swin_fpn", str(tmp_path / "m.pt2"), "--dataset", "ade20k"]) == 2
    assert ".pt2 programs carry none" in capsys.readouterr().err
    assert main(["export", "test_swin_fpn", str(tmp_path / "m.onnx"), "--dataset", "ade20k"]) == 2
    assert "ade20k has 150 classes, the model 5" in capsys.readouterr().err
    assert main(["export", "test_swin_fpn", str(tmp_path / "m.onnx"), "--dataset", "voc"]) == 2
    assert "unknown dataset 'voc'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cli_export_rejects_unknown_format(tmp_path):
    with pytest.raises(SystemExit):
        main(["export", "test_semask_swin_fpn", str(tmp_path / "m.x"), "--format", "tflite"])


def test_cli_export_format_follows_the_file_name(tmp_path, monkeypatch, capsys):
    for out, fmt in (("m.onnx", "torch"), ("m.pt2", "onnx")):  # a contradiction writes nothing
        assert main(["export", "test_swin_fpn", str(tmp_path / out), "--format", fmt]) == 2
        assert "change the suffix or drop --format" in capsys.readouterr().err
        assert not (tmp_path / out).exists()
    saved = []  # .pt2 without --format: a torch.export program (traced by a stub here: only the dispatch is tested)
    monkeypatch.setattr("semask.export.export_program", lambda model, example_size: ("program", example_size))
    monkeypatch.setattr(torch.export, "save", lambda program, path: saved.append((program, str(path))))
    assert main(["export", "test_swin_fpn", str(tmp_path / "m.pt2"), "--size", "256"]) == 0
    assert saved == [(("program", (256, 256)), str(tmp_path / "m.pt2"))]
    assert "(torch, dynamic H/W)" in capsys.readouterr().out


def test_torch_without_deferred_asserts_gets_a_clear_error(monkeypatch, capsys, tmp_path):
    """torch < 2.9: `torch.export.export` has no prefer_deferred_runtime_asserts_over_guards -> say what to install."""
    def old_export(mod, args, kwargs=None, *, dynamic_shapes=None, strict=False, preserve_module_call_signature=()):
        raise AssertionError("must not be reached")

    monkeypatch.setattr(torch.export, "export", old_export)
    model = semask.create_model("test_swin_fpn")
    with pytest.raises(RuntimeError, match=r"torch >= 2\.9.*pip install -U 'torch>=2\.9'"):
        export_program(model)
    assert main(["export", "test_swin_fpn", str(tmp_path / "m.onnx")]) == 2
    assert "needs torch >= 2.9" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_loads_weights_as_the_predictor(tmp_path, monkeypatch, capsys, caplog):
    """A tag exports its published weights or fails with how to get them (it exported random weights under the
    tag's class names); --weights loads local ones; a bare architecture exports random weights with a warning."""
    assert main(["export", "semask_swin_tiny_fpn.ade20k", str(tmp_path / "t.pt2")]) == 2
    assert "not published yet" in capsys.readouterr().err and not (tmp_path / "t.pt2").exists()
    exported = []  # the dispatch only: a stub traces
    monkeypatch.setattr("semask.export.export_program", lambda model, example_size: exported.append(model) or "p")
    monkeypatch.setattr(torch.export, "save", lambda program, path: None)
    torch.manual_seed(0)
    trained = semask.create_model("test_swin_fpn").eval()
    perturb_weights(trained)
    weights = save_pretrained(trained, tmp_path / "w")
    assert main(["export", "test_swin_fpn", str(tmp_path / "m.pt2"), "--weights", str(weights)]) == 0
    torch.testing.assert_close(exported[-1].state_dict(), trained.state_dict(), rtol=0, atol=0)
    with caplog.at_level("WARNING"):
        assert main(["export", "test_swin_fpn", str(tmp_path / "m.pt2")]) == 0
    assert "random weights" in caplog.text


def test_cli_export_reports_torch_export_failures_without_a_traceback(tmp_path, monkeypatch, capsys):
    """A tracer failure (here: a minimum below MiT's guard of 61, the old 33) is one clear error, exit code 2."""
    monkeypatch.setattr("semask.export.min_input_size", lambda model: 33)
    assert main(["export", "test_mit_segformer", str(tmp_path / "m.pt2"), "--size", "256"]) == 2
    err = capsys.readouterr().err
    assert "exporting test_mit_segformer (torch, traced at 256x256) failed in UserError: Constraints violated" in err
    assert "Traceback" not in err and not (tmp_path / "m.pt2").exists()
