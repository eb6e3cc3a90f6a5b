"""TLS from Python: the tls_* keyword options and their WEIGHTD_TLS_*
defaults, against a daemon that requires client certificates (certificates
made by openssl, tests/testing/make_certs.sh)."""

import pathlib
import subprocess

import numpy as np
import pytest

import weightd
from conftest import weightd_daemon

MAKE_CERTS = (pathlib.Path(__file__).resolve().parents[2] /
              "tests/testing/make_certs.sh")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    path = tmp_path_factory.mktemp("certs")
    subprocess.run([str(MAKE_CERTS), str(path)], check=True,
                   capture_output=True, timeout=60)
    return path


@pytest.fixture
def mtls_server(certs):
    with weightd_daemon(f"--tls_cert={certs / 'server.crt'}",
                        f"--tls_key={certs / 'server.key'}",
                        f"--tls_client_ca={certs / 'ca.crt'}") as (address, _):
        yield address


def test_a_worker_with_its_certificate_trains_over_mutual_tls(mtls_server,
                                                              certs):
    client = weightd.Client(mtls_server, "py-tls",
                            tls_ca=str(certs / "ca.crt"),
                            tls_cert=str(certs / "client.crt"),
                            tls_key=str(certs / "client.key"))
    w = np.full(8, 3.0, dtype=np.float32)
    client.join({"w": w})
    w[:] = 5.0
    client.push_pull({"w": w})
    assert w.tolist() == [5.0] * 8


def test_the_options_default_to_the_environment(mtls_server, certs,
                                                monkeypatch):
    monkeypatch.setenv("WEIGHTD_TLS_CA", str(certs / "ca.crt"))
    monkeypatch.setenv("WEIGHTD_TLS_CERT", str(certs / "client.crt"))
    monkeypatch.setenv("WEIGHTD_TLS_KEY", str(certs / "client.key"))
    client = weightd.Client(mtls_server, "py-env")
    # A call over the TLS connection (the client connected with the
    # environment's files, or it would have raised).
    assert client.status()["rounds_closed"] == 0


def test_a_server_certificate_no_given_ca_signed_is_refused_at_once(
        mtls_server, certs):
    with pytest.raises(weightd.Unavailable,
                       match="TLS handshake .* failed: .*certificate verify "
                             "failed; check that --tls_ca"):
        weightd.Client(mtls_server, "py-wrong-ca", connect_timeout=30,
                       tls_ca=str(certs / "other-ca.crt"),
                       tls_cert=str(certs / "client.crt"),
                       tls_key=str(certs / "client.key"))


def test_options_that_cannot_work_are_refused_before_connecting(certs):
    with pytest.raises(weightd.InvalidArgument, match="needs the CA too"):
        weightd.Client("127.0.0.1:1", "x", tls_ca="",
                       tls_cert=str(certs / "client.crt"),
                       tls_key=str(certs / "client.key"))
    with pytest.raises(weightd.InvalidArgument,
                       match="the certificate expired"):
        weightd.Client("127.0.0.1:1", "x", tls_ca=str(certs / "ca.crt"),
                       tls_cert=str(certs / "client-expired.crt"),
                       tls_key=str(certs / "client.key"))


@pytest.fixture
def policy_server(tmp_path):
    import hashlib
    digest = hashlib.sha256(b"py-secret").hexdigest()
    policy = tmp_path / "policy.json"
    policy.write_text(
        '{"principals": [{"name": "py", "role": "WORKER", "tensors": ["py/*"],'
        ' "worker_ids": ["py-*"], "token_sha256": ["%s"]}]}' % digest)
    with weightd_daemon(f"--auth_policy={policy}", "--insecure") as (address,
                                                                    _):
        yield address


def test_a_token_admits_a_worker_and_its_absence_is_unauthenticated(
        policy_server, tmp_path, monkeypatch):
    client = weightd.Client(policy_server, "py-0", token="py-secret")
    w = np.full(4, 2.0, dtype=np.float32)
    client.join({"py/w": w})
    with pytest.raises(weightd.PermissionDenied,
                       match="principal py .* may not use tensor other/w"):
        client.join({"other/w": np.zeros(4, np.float32)})
    # The token from the file WEIGHTD_TOKEN_FILE names.
    token_file = tmp_path / "token"
    token_file.write_text("py-secret\n")
    monkeypatch.setenv("WEIGHTD_TOKEN_FILE", str(token_file))
    assert weightd.Client(policy_server, "py-1").status()["rounds_closed"] == 0
    monkeypatch.delenv("WEIGHTD_TOKEN_FILE")
    with pytest.raises(weightd.Unauthenticated, match="no credentials"):
        weightd.Client(policy_server, "py-2", connect_timeout=5)
