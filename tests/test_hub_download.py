"""The real huggingface_hub download path against a loopback server that answers like the Hub's resolve endpoint.

`HF_ENDPOINT` points at 127.0.0.1 and `HF_HOME` at a tmp folder; semask reads both at call time.
"""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import huggingface_hub.constants
import huggingface_hub.file_download
import pytest
import torch

import semask
from semask.convert.segformer import load_segformer
from semask.hub import load_manifest, save_pretrained

REPO = "someone/semask-test"
OLD, NEW = "a" * 40, "b" * 40  # commits: OLD has weights A, NEW (= main) has weights B
TAG = "test_semask_swin_fpn.hubtest"


def _folder_bytes(tmp: Path, seed: int) -> dict[str, bytes]:
    torch.manual_seed(seed)
    model = semask.create_model("test_semask_swin_fpn")
    save_pretrained(model, tmp / str(seed))
    return {p.name: p.read_bytes() for p in (tmp / str(seed)).iterdir()}


class FakeHub(ThreadingHTTPServer):
    """HEAD/GET /{repo}/resolve/{revision}/{filename} with X-Repo-Commit, ETag, Content-Length, X-Error-Code."""

    daemon_threads = True

    def __init__(self, files: dict[str, dict[str, bytes]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos = {REPO: {"refs": {"main": NEW}, "commits": files}}
        self.requests: list[tuple[str, str]] = []
        self.truncate = False  # send half of the next GET body, then drop every later connection
        self.dead = False
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args) -> None:
        pass

    def _resolve(self) -> tuple[str, bytes] | None:
        parts = unquote(self.path.split("?")[0]).strip("/").split("/")
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        repo = self.server.repos.get(repo_id)
        if parts[2:3] != ["resolve"] or repo is None:
            return self._error(404, "RepoNotFound")
        commit = repo["refs"].get(revision, revision)
        if commit not in repo["commits"]:
            return self._error(404, "RevisionNotFound")
        if filename not in repo["commits"][commit]:
            return self._error(404, "EntryNotFound", commit)
        return commit, repo["commits"][commit][filename]

    def _error(self, code: int, error: str, commit: str | None = None) -> None:
        self.send_response(code)
        self.send_header("X-Error-Code", error)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _head(self, commit: str, data: bytes, *, status: int = 200, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')  # LFS files: the etag is the sha256
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()

    def do_HEAD(self) -> None:
        self.server.requests.append(("HEAD", self.path))
        if self.server.dead:
            return self.close_connection_now()
        if (found := self._resolve()) is not None:
            self._head(*found)

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path))
        if self.server.dead:
            return self.close_connection_now()
        if (found := self._resolve()) is None:
            return
        commit, data = found
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        if start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
        else:
            self._head(commit, data)
        if self.server.truncate:
            self.wfile.write(data[start:][: len(data) // 2])
            self.wfile.flush()
            self.server.dead = True
            return self.close_connection_now()
        self.wfile.write(data[start:])

    def close_connection_now(self) -> None:
        self.close_connection = True
        self.connection.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    tmp = tmp_path_factory.mktemp("weights")
    return {OLD: _folder_bytes(tmp, 1), NEW: _folder_bytes(tmp, 2)}


@pytest.fixture
def hub(files, tmp_path, monkeypatch):
    server = FakeHub(files)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    yield server
    server.shutdown()
    server.server_close()


def _pin(monkeypatch, *, revision: str = OLD, sha256: str | None = None, files=None, filename="model.safetensors"):
    """Register a published test tag in the (cached) manifest for the duration of the test."""
    data = files[revision]["model.safetensors"] if files else b""
    entry = {"arch": "test_semask_swin_fpn", "model": {}, "source": {"url": "https://example.invalid/orig.pth"},
             "hub": {"repo_id": REPO, "revision": revision, "filename": filename,
                     "sha256": sha256 or hashlib.sha256(data).hexdigest()}}
    monkeypatch.setitem(load_manifest(), TAG, entry)


def _cache_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and ".locks" not in p.parts and p.name != "CACHEDIR.TAG"
                  and "refs" not in p.parts and ".no_exist" not in p.parts)


def _weights_equal(model, data: bytes) -> bool:
    from safetensors.torch import load

    ref = load(data)
    return all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_first_download_then_offline_cache_hit(hub, files, monkeypatch, tmp_path):
    _pin(monkeypatch, files=files)
    model = semask.create_model(TAG, pretrained=True)
    assert _weights_equal(model, files[OLD]["model.safetensors"])
    assert ("GET", f"/{REPO}/resolve/{OLD}/model.safetensors") in hub.requests
    cached = _cache_files(tmp_path / "hf" / "hub")
    blob = hashlib.sha256(files[OLD]["model.safetensors"]).hexdigest()
    assert [p.name for p in cached] == [blob, "model.safetensors"]

    # Offline, server gone: the pinned file comes from the cache without a request.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.dead = True
    n = len(hub.requests)
    again = semask.create_model(TAG, pretrained=True)
    assert _weights_equal(again, files[OLD]["model.safetensors"]) and len(hub.requests) == n
    # ... but a file never downloaded is a clear FileNotFoundError naming HF_HUB_OFFLINE.
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        semask.create_model("test_semask_swin_fpn", pretrained=f"hf-hub:{REPO}")
    assert len(hub.requests) == n


def test_offline_set_at_import_time_is_honoured(hub, files, monkeypatch):
    _pin(monkeypatch, files=files)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as if HF_HUB_OFFLINE=1 before import
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        semask.create_model(TAG, pretrained=True)
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):  # a SegFormer repo's config.json as well
        load_segformer("nvidia/segformer-b0-finetuned-ade-512-512")
    assert hub.requests == []


def test_revision_pinning(hub, files, monkeypatch):
    _pin(monkeypatch, files=files, revision=OLD)
    assert _weights_equal(semask.create_model(TAG, pretrained=True), files[OLD]["model.safetensors"])
    latest = semask.create_model("test_semask_swin_fpn", pretrained=f"hf-hub:{REPO}")
    assert _weights_equal(latest, files[NEW]["model.safetensors"])
    pinned = semask.create_model("test_semask_swin_fpn", pretrained=f"hf-hub:{REPO}@{OLD}")
    assert _weights_equal(pinned, files[OLD]["model.safetensors"])
    # Offline, the branch name resolves through the cached ref to the commit downloaded last.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _weights_equal(semask.create_model("test_semask_swin_fpn", pretrained=f"hf-hub:{REPO}@main"),
                          files[NEW]["model.safetensors"])


def test_sha256_mismatch_deletes_cached_file(hub, files, monkeypatch, tmp_path):
    _pin(monkeypatch, files=files, sha256="0" * 64)
    with pytest.raises(ValueError, match="sha256 mismatch.*deleted"):
        semask.create_model(TAG, pretrained=True)
    assert _cache_files(tmp_path / "hf" / "hub") == []
    _pin(monkeypatch, files=files)  # the right hash: downloaded again and accepted
    assert _weights_equal(semask.create_model(TAG, pretrained=True), files[OLD]["model.safetensors"])


def test_missing_file_repo_and_revision_are_404(hub, files, monkeypatch, tmp_path):
    _pin(monkeypatch, files=files, filename="nope.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist on the hub"):
        semask.create_model(TAG, pretrained=True)
    with pytest.raises(FileNotFoundError, match="does not exist on the hub"):
        semask.create_model("test_semask_swin_fpn", pretrained="hf-hub:someone/missing")
    with pytest.raises(FileNotFoundError, match="does not exist on the hub"):
        semask.create_model("test_semask_swin_fpn", pretrained=f"hf-hub:{REPO}@{'c' * 40}")
    assert _cache_files(tmp_path / "hf" / "hub") == []


def test_server_dying_mid_download_leaves_no_file(hub, files, monkeypatch, tmp_path):
    class _NoSleep:  # huggingface_hub waits 1 s between its 5 resume attempts
        sleep = staticmethod(lambda s: None)

        def __getattr__(self, name):
            return getattr(time, name)

    monkeypatch.setattr(huggingface_hub.file_download, "time", _NoSleep())
    _pin(monkeypatch, files=files)
    hub.truncate = True
    with pytest.raises(OSError, match="nothing was kept in the cache"):
        semask.create_model(TAG, pretrained=True)
    assert hub.dead
    assert _cache_files(tmp_path / "hf" / "hub") == []
    hub.truncate = hub.dead = False  # the server is back: a clean download
    assert _weights_equal(semask.create_model(TAG, pretrained=True), files[OLD]["model.safetensors"])


def test_unpublished_tag_says_how_to_convert():
    with pytest.raises(ValueError, match=r"not published yet.*drive\.google\.com.*semask convert ORIGINAL\.pth"):
        semask.create_model("semask_swin_tiny_fpn.ade20k", pretrained=True)
    with pytest.raises(ValueError, match="hf-hub:owner/repo"):
        semask.create_model("test_semask_swin_fpn", pretrained="hf-hub:nothing")


def test_pretrained_backbone_from_hub_repo(hub):
    from safetensors.torch import save
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(5)
    tm = SwinTransformer(embed_dim=16, depths=(2, 2, 2, 1), num_heads=(1, 2, 4, 8), window_size=7, num_classes=10)
    commit = "d" * 40
    hub.repos["timm/tiny-swin"] = {"refs": {"main": commit}, "commits": {commit: {"model.safetensors": save(
        {k: v.contiguous() for k, v in tm.state_dict().items()})}}}
    model = semask.create_model("test_semask_swin_fpn", pretrained_backbone="hf-hub:timm/tiny-swin")
    torch.testing.assert_close(model.backbone.patch_embed.proj.weight, tm.patch_embed.proj.weight, atol=0, rtol=0)
    assert ("GET", "/timm/tiny-swin/resolve/main/model.safetensors") in hub.requests


def test_hub_repo_as_a_model_name(hub, files, monkeypatch, tmp_path, caplog):
    """`create_model("hf-hub:owner/repo[@rev]")` (timm's convention): the repo's config.json is the architecture,
    its weights and config come from one commit; get_config / Predictor take the name too; a repo without
    config.json is a clear error naming the call that loads bare weights."""
    from semask.infer import Predictor

    old = semask.create_model(f"hf-hub:{REPO}@{OLD}")
    assert _weights_equal(old, files[OLD]["model.safetensors"]) and old.config.arch == "test_semask_swin_fpn"
    assert _weights_equal(semask.create_model(f"hf-hub:{REPO}"), files[NEW]["model.safetensors"])
    assert semask.get_config(f"hf-hub:{REPO}", attn_impl="eager").attn_impl == "eager"
    with caplog.at_level("WARNING"):
        p = Predictor(f"hf-hub:{REPO}@{OLD}")
    assert _weights_equal(p.model, files[OLD]["model.safetensors"]) and "random weights" not in caplog.text
    with pytest.raises(ValueError, match="loads its own weights"):
        semask.create_model(f"hf-hub:{REPO}", pretrained="x.pth")
    hub.repos["someone/bare"] = {"refs": {"main": "c" * 40},
                                 "commits": {"c" * 40: {"model.safetensors": files[OLD]["model.safetensors"]}}}
    with pytest.raises(FileNotFoundError, match=r"needs a semask repo.*create_model\('ARCH', pretrained="):
        semask.create_model("hf-hub:someone/bare")
    bare = semask.create_model("test_semask_swin_fpn", pretrained="hf-hub:someone/bare")
    assert _weights_equal(bare, files[OLD]["model.safetensors"])


def test_damaged_cached_blob_is_evicted(hub, files, monkeypatch, tmp_path):
    """A cached LFS blob whose bytes no longer match its name (the sha256 the hub reported) is deleted with a clear
    error, and the next call downloads it again: not a permanent failure, nor other weights loaded silently."""
    spec = f"hf-hub:{REPO}@{OLD}"
    semask.create_model("test_semask_swin_fpn", pretrained=spec)
    blob = tmp_path / "hf" / "hub" / "models--someone--semask-test" / "blobs" / hashlib.sha256(
        files[OLD]["model.safetensors"]).hexdigest()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in a tensor: it would still load
    blob.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 mismatch.*deleted"):
        semask.create_model("test_semask_swin_fpn", pretrained=spec)
    assert not blob.exists()
    assert _weights_equal(semask.create_model("test_semask_swin_fpn", pretrained=spec), files[OLD]["model.safetensors"])
