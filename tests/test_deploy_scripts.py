"""deploy/ scripts: certificates and node keys, start commands, connections.

Fast (seconds): real openssl, real key files loaded the way Flower loads
them, and the start scripts' exact commands (--dry-run) parsed by the
installed Flower's own argument parsers.
"""

from __future__ import annotations

import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_ssh_private_key,
    load_ssh_public_key,
)

from deploy import flags
from deploy.flwr_connection import add_connection

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
BIN = Path(sys.executable).parent


def _sh(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "PYTHON": sys.executable, **kw}
    return subprocess.run(["bash", *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    out = tmp_path_factory.mktemp("c") / "certs"
    done = _sh(str(DEPLOY / "make_certs.sh"), "-N", "2", "-s",
               "localhost,127.0.0.1,10.250.0.1", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("tool", ["python", "ssh-keygen"])
def test_node_keys_are_p384_openssh_pairs_with_private_mode_600(tool, tmp_path):
    if tool == "ssh-keygen" and shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    out = tmp_path / "c"
    done = _sh(str(DEPLOY / "make_certs.sh"), "-N", "2", "-K", tool, str(out))
    assert done.returncode == 0, done.stderr
    assert f"2 SuperNode key pair(s) ({tool})" in done.stdout
    for i in range(2):
        private = out / f"supernode_credentials_{i}"
        key = load_ssh_private_key(private.read_bytes(), None)  # as flower-supernode
        pub = load_ssh_public_key((out / f"{private.name}.pub").read_bytes())
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.curve.name == "secp384r1"
        assert key.public_key() == pub
        assert _mode(private) == 0o600
    assert _mode(out / "server.key") == 0o600 and _mode(out / "token") == 0o600


def test_server_certificate_carries_the_given_sans(certs):
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in",
         str(certs / "server.pem")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for san in ("DNS:localhost", "IP Address:127.0.0.1", "IP Address:10.250.0.1"):
        assert san in text


def test_make_certs_refuses_bad_input_clearly(certs, tmp_path):
    again = _sh(str(DEPLOY / "make_certs.sh"), "-N", "1", str(certs))
    assert again.returncode != 0 and "exists (use -f to overwrite)" in again.stderr
    bad = _sh(str(DEPLOY / "make_certs.sh"), "-N", "two", str(tmp_path / "x"))
    assert bad.returncode != 0 and "-N must be a whole number" in bad.stderr
    tool = _sh(
        str(DEPLOY / "make_certs.sh"), "-N", "1", "-K", "gpg", str(tmp_path / "y")
    )
    assert (
        tool.returncode != 0 and "-K must be auto, python or ssh-keygen" in tool.stderr
    )


def _flags(cmd: str) -> list[str]:
    return [w.split("=")[0] for w in cmd.split() if w.startswith("--")]


def test_superlink_command_has_tls_auth_and_no_dependency_install(certs):
    done = _sh(str(DEPLOY / "start_superlink.sh"), "--certs", str(certs),
               "--port", "8123", "--database", "s.db", "--dry-run")  # fmt: skip
    assert done.returncode == 0, done.stderr
    cmd = done.stdout.strip()
    names = _flags(cmd)
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile",
                 "--enable-supernode-auth", "--disable-runtime-dependency-installation",
                 "--host", "--port", "--database", "--log-file"):  # fmt: skip
        assert flag in names
    assert "--insecure" not in names
    # The installed Flower accepts every flag, with the values given.
    args = flags.parse("flower-superlink", shlex.split(cmd)[1:])
    assert args.enable_supernode_auth and args.port == 8123


def test_supernode_command_has_partition_key_and_own_port(certs):
    done = _sh(str(DEPLOY / "start_supernode.sh"), "--superlink", "10.250.0.1:8000",
               "--ca", str(certs / "ca.crt"),
               "--key", str(certs / "supernode_credentials_1"),
               "--partition-id", "1", "--num-partitions", "3", "--port", "9095",
               "--dry-run")  # fmt: skip
    assert done.returncode == 0, done.stderr
    cmd = done.stdout.strip()
    assert "--node-config partition-id=1\\ num-partitions=3" in cmd
    assert "--auth-supernode-private-key" in cmd and "--root-certificates" in cmd
    assert "--port 9095" in cmd and "--superlink 10.250.0.1:8000" in cmd
    args = flags.parse("flower-supernode", shlex.split(cmd)[1:])
    assert args.node_config == "partition-id=1 num-partitions=3"


def test_supernode_script_rejects_a_partition_out_of_range(certs):
    done = _sh(str(DEPLOY / "start_supernode.sh"), "--superlink", "h:8000",
               "--ca", str(certs / "ca.crt"),
               "--key", str(certs / "supernode_credentials_0"),
               "--partition-id", "3", "--num-partitions", "3", "--dry-run")  # fmt: skip
    assert done.returncode == 2
    assert "--partition-id must be 0 .. 2, got '3'" in done.stderr


def test_flag_check_catches_flags_of_older_flower_releases():
    argv = ["--insecure", "--clientappio-api-address", "0.0.0.0:9094"]
    with pytest.raises(ValueError, match="no longer supported"):
        flags.parse("flower-supernode", argv)
    assert flags.stale_flags(argv) == ["--clientappio-api-address"]
    assert flags.stale_flags(["--superlink=superlink:9092"]) == [
        "--superlink=superlink:9092"
    ]


def test_connection_entry_is_added_and_replaced(certs, tmp_path):
    config = tmp_path / "home" / "config.toml"
    add_connection(config, "lab", "10.250.0.1:8000", certs / "ca.crt")
    add_connection(config, "lab", "10.250.0.1:9000", certs / "ca.crt")
    data = tomllib.loads(config.read_text())
    assert data["superlink"]["default"] == "lab"
    assert data["superlink"]["lab"] == {
        "address": "10.250.0.1:9000",
        "root-certificates": str((certs / "ca.crt").resolve()),
    }
    with pytest.raises(ValueError, match="HOST:PORT"):
        add_connection(config, "lab", "nohost", certs / "ca.crt")
