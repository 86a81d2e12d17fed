"""The authorizing GCS proxy (ocrpipe.local.iam.gcs_proxy) in front of a real fake-gcs-server,
driven through google-cloud-storage and ocrpipe.storage.GcsStore as the services drive it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from google.api_core.exceptions import Forbidden

from ocrpipe.errors import AccessDenied, RetryableError
from ocrpipe.local.readiness import START_S, exited, http_answers, wait_until_ready
from ocrpipe.local.stack import fake_gcs_server_binary, free_port
from ocrpipe.storage import GcsStore

IDENTITIES = ("splitter", "worker", "operator", "eventarc", "creator")
PROJECT = "proxy-test"


def own_doc() -> str:
    """A document folder of the test's own: no test reads what another wrote."""
    return f"report-{uuid.uuid4().hex[:8]}.pdf/@1712"


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path | None = None) -> None:
    answers = http_answers(url, lambda _: True)
    wait_until_ready(
        answers, what=f"{url} did not answer", timeout=START_S, died=exited(process, log)
    )


@dataclass
class Proxied:
    upstream: str
    ports: dict[str, int]
    usage: Path
    buckets: dict[str, str]
    log: Path

    def url(self, identity: str) -> str:
        return f"http://127.0.0.1:{self.ports[identity]}"

    def store(self, identity: str) -> GcsStore:
        return GcsStore.connect(PROJECT, self.url(identity))

    def decisions(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.usage.read_text("utf-8").splitlines()]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, GcsStore]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(fake_gcs_server_binary()), "-scheme", "http", "-host", "127.0.0.1",
               "-port", str(port), "-backend", "memory", "-external-url", url,
               "-log-level", "error"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"{url}/storage/v1/b", process)
        yield url, GcsStore.connect(PROJECT, url)
    finally:
        process.terminate()
        process.wait(10)


def start_proxy(
    upstream: str, tmp: Path, buckets: dict[str, str], overrides: Mapping[str, object]
) -> tuple[subprocess.Popen[bytes], Proxied]:
    ports = {identity: free_port() for identity in IDENTITIES}
    usage = tmp / "usage.jsonl"
    overrides_file = tmp / "overrides.json"
    overrides_file.write_text(json.dumps(overrides), encoding="utf-8")
    env = {
        **os.environ,
        "OCRPIPE_PROJECT": PROJECT,
        "OCRPIPE_INPUT_BUCKET": buckets["input"],
        "OCRPIPE_WORK_BUCKET": buckets["work"],
        "OCRPIPE_OUTPUT_BUCKET": buckets["output"],
        "OCRPIPE_IAM_OVERRIDES_FILE": str(overrides_file),
    }
    listen = [arg for i, p in ports.items() for arg in ("--listen", f"{i}={p}")]
    command = [sys.executable, "-m", "ocrpipe.local.iam.gcs_proxy", "--upstream", upstream,
               *listen, "--usage-file", str(usage)]  # fmt: skip
    log = tmp / "proxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    proxied = Proxied(upstream, ports, usage, buckets, log)
    wait_http(proxied.url("worker") + "/", process, log)
    return process, proxied


@pytest.fixture(scope="module")
def proxy(
    upstream: tuple[str, GcsStore], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxied]:
    url, direct = upstream
    suffix = uuid.uuid4().hex[:6]
    buckets = {role: f"{role}-{suffix}" for role in ("input", "work", "output")}
    for name in buckets.values():
        direct.client.create_bucket(name)
    # "creator": objectCreator on work only, to see how GCS treats an overwrite without delete.
    overrides = {"creator": {"add": [{"bucket": "work", "role": "roles/storage.objectCreator"}]}}
    process, proxied = start_proxy(url, tmp_path_factory.mktemp("proxy"), buckets, overrides)
    try:
        yield proxied
    finally:
        process.terminate()
        process.wait(10)


def test_allowed_calls_go_through(proxy: Proxied) -> None:
    out, doc = proxy.buckets["output"], own_doc()
    splitter, worker = proxy.store("splitter"), proxy.store("worker")
    assert splitter.create(out, f"{doc}/manifest.json", b'{"pages": 2}', "application/json")
    assert worker.create(out, f"{doc}/pages/00001.md", b"# one", "text/markdown")
    names = [o.name for o in worker.list(out, f"{doc}/pages/")]
    assert names == [f"{doc}/pages/00001.md"]
    assert worker.read(out, f"{doc}/manifest.json") == b'{"pages": 2}'


def test_a_repeated_create_only_write_reads_as_already_there(proxy: Proxied) -> None:
    out, splitter = proxy.buckets["output"], proxy.store("splitter")
    name = f"again-{uuid.uuid4().hex[:6]}/@1/error.json"
    assert splitter.create(out, name, b"{}", "application/json")
    assert splitter.create(out, name, b"{}", "application/json") is False  # 412, not 403


def test_a_refused_call_gets_gcs_403_and_surfaces_as_access_denied(proxy: Proxied) -> None:
    out, doc = proxy.buckets["output"], own_doc()
    splitter = proxy.store("splitter")
    with pytest.raises(AccessDenied) as caught:
        splitter.create(out, f"{doc}/pages/00002.md", b"# two", "text/markdown")
    assert caught.value.permission == "storage.objects.create"
    assert caught.value.resource == f"gs://{out}/{doc}/pages/00002.md"
    assert isinstance(caught.value, RetryableError) and caught.value.push_status == 503
    assert f"ocrpipe-splitter@{PROJECT}.iam.gserviceaccount.com" in str(caught.value)

    with pytest.raises(AccessDenied) as listed:
        splitter.list(out, f"{doc}/pages/")
    assert listed.value.permission == "storage.objects.list"

    raw = httpx.get(f"{proxy.url('splitter')}/storage/v1/b/{out}/o", params={"prefix": "x/"})
    assert raw.status_code == 403
    error = raw.json()["error"]
    assert error["code"] == 403
    assert error["message"] == (
        f"ocrpipe-splitter@{PROJECT}.iam.gserviceaccount.com does not have"
        " storage.objects.list access to the Google Cloud Storage bucket. Permission"
        " 'storage.objects.list' denied on resource (or it may not exist)."
    )
    assert error["errors"] == [{"message": error["message"], "domain": "global",
                                "reason": "forbidden"}]  # fmt: skip
    log = [json.loads(line) for line in proxy.log.read_text("utf-8").splitlines() if line]
    assert any(
        "splitter lacks storage.objects.list on projects/_/buckets/" + out in entry["message"]
        for entry in log
    )


def test_usage_file_records_every_decision(proxy: Proxied) -> None:
    work, out = proxy.buckets["work"], proxy.buckets["output"]
    with pytest.raises(AccessDenied):
        proxy.store("worker").create(work, "pages/d1/00009.png", b"x", "image/png")
    assert proxy.store("worker").list(out, f"{own_doc()}/pages/") == []
    decisions = proxy.decisions()
    assert {
        "allowed": False,
        "identity": "worker",
        "permission": "storage.objects.create",
        "resource": f"projects/_/buckets/{work}/objects/pages/d1/00009.png",
        "grant": None,
    } in decisions
    assert any(
        d["allowed"] and d["identity"] == "worker" and d["resource"] == f"projects/_/buckets/{out}"
        for d in decisions
    )


def test_downloads_after_a_stat_still_go_through_the_proxy(proxy: Proxied) -> None:
    """get_blob() returns a mediaLink; if it kept the upstream's URL, the download would
    bypass the proxy. The worker's page-image read goes stat, then download."""
    work, splitter = proxy.buckets["work"], proxy.store("splitter")
    name = f"pages/d-{uuid.uuid4().hex[:6]}/00001.png"
    assert splitter.create(work, name, b"png bytes", "image/png")
    blob = proxy.store("worker").client.bucket(work).get_blob(name)
    assert proxy.upstream not in (blob.media_link or "")
    assert blob.download_as_bytes() == b"png bytes"
    gets = [d for d in proxy.decisions() if d["permission"] == "storage.objects.get"]
    assert sum(1 for d in gets if str(d["resource"]).endswith(name)) >= 2  # stat + download
    with pytest.raises(AccessDenied):
        proxy.store("eventarc").read(work, name)


def test_an_overwrite_needs_delete(proxy: Proxied) -> None:
    work, creator = proxy.buckets["work"], proxy.store("creator")
    name = f"creator-{uuid.uuid4().hex[:6]}"
    assert creator.create(work, name, b"1", "text/plain")
    with pytest.raises(AccessDenied) as create_only:  # objectCreator: 403, not 412
        creator.create(work, name, b"2", "text/plain")
    assert create_only.value.permission == "storage.objects.delete"
    with pytest.raises(AccessDenied) as plain:
        creator.upload(work, name, io.BytesIO(b"3"), "text/plain")
    assert plain.value.permission == "storage.objects.delete"
    assert proxy.store("splitter").read(work, name) == b"1"
    # objectUser may replace: the operator submits the same input twice.
    inp, operator = proxy.buckets["input"], proxy.store("operator")
    first = operator.upload(inp, "same.pdf", io.BytesIO(b"%PDF-1"), "application/pdf")
    second = operator.upload(inp, "same.pdf", io.BytesIO(b"%PDF-2"), "application/pdf")
    assert second != first
    deletes = [d for d in proxy.decisions() if d["permission"] == "storage.objects.delete"]
    assert any(d["identity"] == "operator" and d["allowed"] for d in deletes)


def test_resumable_uploads_and_rewrites_are_authorized(proxy: Proxied) -> None:
    inp, operator = proxy.buckets["input"], proxy.store("operator")
    data = os.urandom(600 * 1024)
    blob = operator.client.bucket(inp).blob("big.pdf", chunk_size=256 * 1024)
    blob.upload_from_file(io.BytesIO(data), content_type="application/pdf")
    assert proxy.store("worker").read(inp, "big.pdf") == data
    info = operator.stat(inp, "big.pdf")
    assert info is not None
    rewritten = operator.rewrite_in_place(inp, "big.pdf", info.generation)
    assert rewritten not in (None, info.generation)
    assert rewritten is not None
    with pytest.raises(AccessDenied) as caught:  # the worker only reads inputs
        proxy.store("worker").rewrite_in_place(inp, "big.pdf", rewritten)
    assert caught.value.permission == "storage.objects.create"
    # A resumable session belongs to the identity that started it.
    start = httpx.post(
        f"{proxy.url('operator')}/upload/storage/v1/b/{inp}/o",
        params={"uploadType": "resumable", "name": "session.pdf"},
        json={"name": "session.pdf"},
    )
    location = start.headers["location"]
    assert location.startswith(proxy.url("operator"))
    hijack = location.replace(proxy.url("operator"), proxy.url("worker"))
    assert httpx.put(hijack, content=b"%PDF").status_code == 403


def test_calls_the_proxy_cannot_map_are_refused(proxy: Proxied) -> None:
    out, doc = proxy.buckets["output"], own_doc()
    for method, path in [
        ("GET", f"/storage/v1/b/{out}/iam"),
        ("POST", "/batch/storage/v1"),
        ("GET", "/"),
        ("POST", f"/storage/v1/b/{out}/o"),
    ]:
        assert httpx.request(method, proxy.url("operator") + path).status_code == 403, path
    # An upload whose query names an allowed object and whose metadata names another.
    smuggled = httpx.post(
        f"{proxy.url('splitter')}/upload/storage/v1/b/{out}/o",
        params={"uploadType": "multipart", "name": f"{doc}/manifest.json"},
        headers={"content-type": 'multipart/related; boundary="b"'},
        content=b'--b\r\ncontent-type: application/json\r\n\r\n{"name": "x/@1/document.md"}'
        b"\r\n--b\r\ncontent-type: text/plain\r\n\r\nhi\r\n--b--\r\n",
    )
    assert smuggled.status_code == 403
    with pytest.raises(Forbidden):  # object roles do not include storage.buckets.get
        proxy.store("operator").client.get_bucket(out)


def test_overrides_take_one_permission_away(
    upstream: tuple[str, GcsStore], proxy: Proxied, tmp_path: Path
) -> None:
    out, doc = proxy.buckets["output"], own_doc()
    assert proxy.store("splitter").create(out, f"{doc}/manifest.json", b"{}", "application/json")
    overrides = {"worker": {"revoke": [{"bucket": "output", "permission": "storage.objects.list"}]}}
    process, narrowed = start_proxy(upstream[0], tmp_path, proxy.buckets, overrides)
    try:
        worker = narrowed.store("worker")
        with pytest.raises(AccessDenied):
            worker.list(out, f"{doc}/pages/")
        assert worker.read(out, f"{doc}/manifest.json") == b"{}"  # the rest is still granted
    finally:
        process.terminate()
        process.wait(10)


@dataclass(frozen=True)
class Ambiguous:
    method: str
    path: str
    query: str  # raw, as sent
    headers: dict[str, str]
    body: bytes = b""


def _multipart(metadata: str) -> bytes:
    return (
        f"--b\r\ncontent-type: application/json\r\n\r\n{metadata}\r\n--b\r\n"
        "content-type: text/plain\r\n\r\nhi\r\n--b--\r\n"
    ).encode()


def _ambiguous_requests(proxy: Proxied, tag: str, generation: int) -> list[Ambiguous]:
    """Requests that fake-gcs-server reads one way and a careless proxy another: Go's
    ``Query().Get`` takes a repeated parameter's first value, Python's ``parse_qs`` the
    last; Go drops a pair holding ``;``; Go's JSON decoder matches ``"Name"`` to ``name``;
    Go's MIME parser reads ``boundary=`` as a parameter. Each would have the proxy
    authorize one object while the emulator writes another."""
    out, work = proxy.buckets["output"], proxy.buckets["work"]
    doc = quote(f"ambiguous-{tag}/@1", safe="")
    manifest, document = f"{doc}%2Fmanifest.json", f"{doc}%2Fdocument.md"
    upload_out, upload_work = f"/upload/storage/v1/b/{out}/o", f"/upload/storage/v1/b/{work}/o"
    media = {"content-type": "text/plain"}
    multipart = {"content-type": 'multipart/related; boundary="b"'}
    metadata = f'{{"name": "ambiguous-{tag}/@1/manifest.json"}}'
    return [
        # the emulator writes document.md; a last-wins proxy checks manifest.json
        Ambiguous(
            "POST", upload_out, f"uploadType=media&name={document}&name={manifest}", media, b"x"
        ),  # fmt: skip
        Ambiguous(
            "POST",
            upload_out,
            f"uploadType=multipart&uploadType=media&name={manifest}",
            multipart,
            _multipart(metadata),
        ),  # fmt: skip
        # the emulator overwrites generation G; a last-wins proxy sees create-only (=0)
        Ambiguous(
            "POST",
            upload_work,
            f"uploadType=media&name=existing-{tag}"
            f"&ifGenerationMatch={generation}&ifGenerationMatch=0",
            media,
            b"x",
        ),  # fmt: skip
        Ambiguous("GET", f"/storage/v1/b/{out}/o", f"prefix={doc}%2F&prefix=", {}),
        Ambiguous("GET", f"/storage/v1/b/{out}/o/{manifest}", "alt=media&alt=json", {}),
        # a ';' in a pair: Go drops the pair, Python keeps it in the value
        Ambiguous("POST", upload_out, f"uploadType=media&name={manifest};x=1", media, b"x"),
        # Go's JSON decoder: keys match fields whatever their case, the last one wins
        Ambiguous(
            "POST",
            upload_out,
            "uploadType=multipart",
            multipart,
            _multipart(
                f'{{"name": "ambiguous-{tag}/@1/manifest.json",'
                f' "NAME": "ambiguous-{tag}/@1/document.md"}}'
            ),
        ),  # fmt: skip
        Ambiguous(
            "POST",
            upload_out,
            "uploadType=multipart",
            multipart,
            _multipart(f'{{"Name": "ambiguous-{tag}/@1/document.md"}}'),
        ),  # fmt: skip
        # two boundary parameters: which part is the metadata depends on the parser
        Ambiguous(
            "POST",
            upload_out,
            f"uploadType=multipart&name={manifest}",
            {"content-type": 'multipart/related; xboundary="a"; boundary="b"'},
            _multipart(metadata),
        ),  # fmt: skip
    ]


@pytest.mark.parametrize("identity", IDENTITIES)
def test_ambiguous_requests_are_refused_for_every_identity(proxy: Proxied, identity: str) -> None:
    direct = GcsStore.connect(PROJECT, proxy.upstream)
    tag = f"{identity}-{uuid.uuid4().hex[:6]}"
    work = proxy.buckets["work"]
    generation = direct.upload(work, f"existing-{tag}", io.BytesIO(b"kept"), "text/plain")
    requests = _ambiguous_requests(proxy, tag, generation)
    for request in requests:
        url = f"{proxy.url(identity)}{request.path}?{request.query}"
        answer = httpx.request(request.method, url, headers=request.headers, content=request.body)
        assert answer.status_code == 403, (identity, request, answer.text)
        assert "ambiguous" in answer.json()["error"]["message"], (request, answer.text)
    assert direct.list(proxy.buckets["output"], f"ambiguous-{tag}/") == []  # nothing written
    assert direct.read(work, f"existing-{tag}") == b"kept"
    refused = [d for d in proxy.decisions() if d["identity"] == identity and not d["allowed"]]
    assert sum(1 for d in refused if d["permission"] == "ambiguous") == len(requests)
