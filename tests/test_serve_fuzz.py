"""A fuzz run over the served OpenAPI schema (schemathesis): no input gets a 5xx or breaks the schema."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving import serving

pytestmark = pytest.mark.slow


def test_no_generated_request_gets_a_server_error(tiny_exported, tmp_path):
    with serving(tiny_exported, tmp_path, "--control-rate", "100000") as server:
        result = subprocess.run(
            [str(Path(sys.executable).with_name("schemathesis")), "run", f"{server.url}/openapi.json",
             "--checks", "not_a_server_error,status_code_conformance,content_type_conformance",
             # The audio and event streams never end: their bad inputs are covered in test_serve.py.
             "--exclude-path-regex", "^/(stream\\.|api/events)",
             "--max-examples", "60", "--seed", "1", "--request-timeout", "10", "--generation-deterministic",
             "--phases", "examples,coverage,fuzzing"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        assert "Internal Server Error" not in server.stderr() and "Traceback" not in server.stderr()
