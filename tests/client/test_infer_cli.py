"""`rnnserve infer`: every option through a real server, over gRPC and REST; exit 0 for an
answer, 1 for a server's refusal (its code and message on one line), 2 for usage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import Ran, rnnserve
from security_helpers import TOKENS

from rnnserve.client.client import RnnClient


def infer(server, *args: str, url: str = "grpc") -> Ran:
    """rnnserve infer ARGS against the shared server: url "grpc" (HOST:PORT), "grpc://",
    or "http"."""
    urls = {
        "grpc": server.address,
        "grpc://": f"grpc://{server.address}",
        "http": server.http_url,
    }
    return rnnserve("infer", *args, "--url", urls[url])


def numbers(line: str) -> list[float]:
    return [float(v) for v in line.split(",")]


# Answers -------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["grpc", "grpc://", "http"])
def test_infer_values_prints_the_sine_output_over_each_url_form(server, url: str) -> None:
    done = infer(server, "sine-lstm", "--values", "0,0.1,0.2", url=url)

    assert done.returncode == 0, done.stderr
    assert len(numbers(done.stdout.strip())) == 3


@pytest.mark.parametrize("url", ["grpc", "http"])
def test_infer_text_prints_the_tagged_text(server, url: str) -> None:
    done = infer(server, "tagger-gru", "--text", "hello", url=url)

    assert done.returncode == 0, done.stderr
    assert done.stdout == "ohlol\n"


@pytest.mark.parametrize("values", [["--values", "-0.75,0.1"], ["--values=-0.75,0.1"]])
def test_values_may_start_negative(server, values: list[str]) -> None:
    """A list that starts with a minus is a value, not an option, in either spelling."""
    x = np.array([[[-0.75], [0.1]]], np.float32)

    done = infer(server, "sine-gru", *values)
    by_json = infer(server, "sine-gru", "--input", f"x={json.dumps(x.tolist())}", "--output", "y")

    assert done.returncode == 0, done.stderr
    assert done.stdout == by_json.stdout and len(numbers(done.stdout)) == 2


def test_input_as_json_and_as_npy_file_equal_values(server, tmp_path: Path) -> None:
    x = np.array([[[0.0], [0.25], [0.5]]], np.float32)
    np.save(tmp_path / "x.npy", x)

    by_values = infer(server, "sine-gru", "--values", "0,0.25,0.5")
    by_json = infer(server, "sine-gru", "--input", f"x={json.dumps(x.tolist())}", "--output", "y")
    by_file = infer(server, "sine-gru", "--input", f"x=@{tmp_path / 'x.npy'}", "--output", "y")

    assert by_values.returncode == by_json.returncode == by_file.returncode == 0
    assert by_values.stdout == by_json.stdout == by_file.stdout


def test_several_outputs_print_one_line_each(server) -> None:
    done = infer(server, "sine-lstm", "--values", "0,0.1", "--output", "y", "--output", "cn")

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == ["y", "cn"]
    assert len(numbers(lines[1].split(": ")[1])) == 8  # the tiny models' hidden size


@pytest.mark.parametrize("url", ["grpc", "http"])
def test_json_output_is_exact(server, client: RnnClient, url: str) -> None:
    expected = client.infer("sine-rnn", {"x": np.array([[[0.0], [0.3]]], np.float32)}, ["y", "hn"])

    done = infer(server, "sine-rnn", "--values", "0,0.3", "--output", "y", "--output", "hn",
                 "--json", url=url)  # fmt: skip

    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["model_name"], answer["model_version"]) == ("sine-rnn", "1")
    for output in answer["outputs"]:
        data = np.array(output["data"], np.float32).reshape(output["shape"])
        np.testing.assert_array_equal(data, expected[output["name"]])


def test_stream_prints_each_response_as_it_comes(server, client: RnnClient) -> None:
    from rnnserve.client.client import build_request

    request = build_request("seq2seq-gru", {"text": ["hello"]}, ["text_out"])
    expected = [r.outputs["text_out"][0] for r in client.stream(iter([request]))]

    done = infer(server, "seq2seq-gru", "--text", "hello", "--stream")
    as_json = infer(server, "seq2seq-gru", "--text", "hello", "--stream", "--json")

    assert done.returncode == as_json.returncode == 0, done.stderr + as_json.stderr
    assert done.stdout.splitlines() == expected
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [line["parameters"]["triton_final_response"] for line in lines] == [
        *[False] * (len(expected) - 1), True
    ]  # fmt: skip


def test_max_output_length_and_model_version(server) -> None:
    done = infer(server, "seq2seq-gru", "--text", "hello", "--max-output-length", "2",
                 "--model-version", "1")  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert len(done.stdout.rstrip("\n")) <= 2


def test_a_sequence_step_by_step_across_both_protocols(server) -> None:
    tags = []
    for index, char in enumerate("hello"):
        flags = ["--start"] * (index == 0) + ["--end"] * (index == 4)
        url = "grpc" if index % 2 == 0 else "http"
        done = infer(
            server, "tagger-gru", "--text", char, "--sequence-id", "cli-7", *flags, url=url
        )
        assert done.returncode == 0, done.stderr
        tags.append(done.stdout.rstrip("\n"))

    after_end = infer(server, "tagger-gru", "--text", "h", "--sequence-id", "cli-7")

    assert "".join(tags) == "ohlol"
    assert after_end.returncode == 1
    assert after_end.stderr.startswith("rnnserve infer: INVALID_ARGUMENT: sequence 'cli-7'")


def test_a_multi_session_request_from_control_inputs(server) -> None:
    done = infer(server, "tagger-rnn", "--input", 'text=["he", "ll"]',
                 "--input", "sequence_id=[31, 32]", "--input", "sequence_start=[true, true]",
                 "--output", "text_out", "--output", "sequence_error", "--json")  # fmt: skip

    assert done.returncode == 0, done.stderr
    outputs = {o["name"]: o for o in json.loads(done.stdout)["outputs"]}
    assert outputs["sequence_error"]["data"] == ["", ""]
    assert outputs["text_out"]["shape"] == [2]


@pytest.mark.parametrize(("url", "sequence_id"), [("grpc", "41"), ("http", "42")])
def test_offset_steps_a_sequence_exactly_once(server, url: str, sequence_id: str) -> None:
    def step(values: str, offset: int, *flags: str) -> Ran:
        return infer(server, "sine-gru", "--values", values, "--sequence-id", sequence_id,
                     "--offset", str(offset), "--json", *flags, url=url)  # fmt: skip

    def counted(done: Ran) -> int:
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["parameters"]["sequence_offset"]

    assert counted(step("0,0.1", 0, "--start")) == 2
    second = step("0.2", 2)
    assert counted(second) == 3
    retried = step("0.2", 2)  # the same step again: answered again, applied no more
    assert counted(retried) == 3 and retried.stdout == second.stdout
    gap = step("0.3", 5)
    assert gap.returncode == 1
    assert gap.stderr.startswith("rnnserve infer: FAILED_PRECONDITION: sequence_offset 5 ")
    assert "the server has applied 3 time steps" in gap.stderr
    assert counted(step("0.3", 3, "--end")) == 4


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_tls_and_a_token_from_the_environment(token_server, pki, protocol: str) -> None:
    """HOST:PORT with --ca speaks gRPC over TLS, https:// REST over TLS; the token comes
    from RNNSERVE_TOKEN, never the command line."""
    url = token_server.address if protocol == "grpc" else token_server.http_url
    args = ["infer", "sine-lstm", "--values", "0,0.5", "--url", url, "--ca", str(pki.ca)]
    alice = {"RNNSERVE_TOKEN": TOKENS["alice"][0]}

    done = rnnserve(*args, env=alice)
    assert done.returncode == 0, done.stderr
    assert len(numbers(done.stdout.strip())) == 2
    refused = rnnserve(*args)
    assert refused.returncode == 1
    assert refused.stderr.startswith("rnnserve infer: UNAUTHENTICATED: missing credentials")


# Refusals and mistakes -----------------------------------------------------------------


@pytest.mark.parametrize("url", ["grpc", "http"])
def test_a_server_refusal_is_one_line_and_exit_1(server, url: str) -> None:
    done = infer(server, "tagger-gru", "--text", "he\u2603", url=url)

    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("rnnserve infer: INVALID_ARGUMENT: ")
    assert "'\u2603'" in done.stderr


@pytest.mark.parametrize("url", ["grpc", "http"])
def test_an_unknown_model_version_is_not_found(server, url: str) -> None:
    done = infer(server, "sine-gru", "--values", "1", "--model-version", "9", url=url)

    assert done.returncode == 1
    assert done.stderr.startswith("rnnserve infer: NOT_FOUND: model 'sine-gru' has no version '9'")


@pytest.mark.parametrize("url", ["127.0.0.1:1", "http://127.0.0.1:1"])
def test_an_unreachable_server_is_one_line_and_exit_1(url: str) -> None:
    done = rnnserve("infer", "sine-gru", "--values", "1", "--url", url, "--timeout", "5")

    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "UNAVAILABLE" in done.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--text", "h", "--start"], "add --sequence-id"),
        (["--input", "nope=[1]"], "the model has no such input"),
        (["--input", "text=[1"], "is not JSON"),
        (["--input", "text"], "expected NAME=VALUE"),
        ([], "give the request an input"),
        (["--text", "h", "--url", "http://127.0.0.1:1", "--ca", "ca.pem"], "use --url https://"),
        (["--text", "h", "--cert", "client.pem"], "--cert and --key go together"),
        (["--text", "h", "--ca", "/nonexistent/ca.pem"], "/nonexistent/ca.pem: cannot be read"),
    ],
    ids=[
        "start-without-id",
        "unknown-input",
        "bad-json",
        "no-value",
        "no-input",
        "http-ca",
        "cert-without-key",
        "missing-ca",
    ],
)
def test_usage_mistakes_exit_2(server, args: list[str], words: str) -> None:
    done = rnnserve("infer", "tagger-gru", "--url", server.address, *args)

    assert done.returncode == 2
    assert words in done.stderr
    assert "Traceback" not in done.stderr


def test_stream_over_rest_is_a_usage_mistake(server) -> None:
    done = infer(server, "seq2seq-gru", "--text", "hello", "--stream", url="http")

    assert done.returncode == 2
    assert "--stream needs gRPC" in done.stderr
