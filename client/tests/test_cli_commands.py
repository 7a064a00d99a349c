"""The agentvault command line: parsing, profiles and exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentvault_client import cli


def test_every_documented_command_exists() -> None:
    parser = cli.build_parser()
    for argv in (
        ["enroll", "--server", "http://x"],
        ["status"],
        ["rooms"],
        ["devices"],
        ["send", "--room", "r", "hi"],
        ["listen", "--json"],
        ["chat", "--room", "r"],
        ["fingerprint"],
        ["verify", "d1", "--number", "1"],
        ["agent", "run", "--room", "r", "--", "python3", "bot.py", "--flag"],
    ):
        assert parser.parse_args(argv).run is not None


def test_agent_run_keeps_the_programs_own_arguments() -> None:
    args = cli.build_parser().parse_args(
        ["agent", "run", "--room", "ops", "--mode", "lines", "--", "bot", "--room", "x"]
    )
    assert args.command[-3:] == ["bot", "--room", "x"]
    assert args.mode == "lines"


@pytest.mark.parametrize("program", ["/nonexistent/bot", "no-such-command-av"])
def test_agent_run_refuses_a_program_it_cannot_start(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    program: str,
) -> None:
    monkeypatch.setenv("AGENTVAULT_HOME", str(tmp_path))
    code = cli.main(["agent", "run", "--room", "ops", "--", program])

    assert code == cli.EXIT_USAGE
    assert "error: program_not_found:" in capsys.readouterr().err


def test_the_profile_defaults_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTVAULT_PROFILE", "agent")
    assert cli.build_parser().parse_args(["status"]).profile == "agent"


def test_a_missing_profile_exits_1_with_the_error_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AGENTVAULT_HOME", str(tmp_path))
    assert cli.main(["--profile", "ghost", "status"]) == 1
    assert "error: not_enrolled:" in capsys.readouterr().err


def test_enroll_against_no_server_fails_and_leaves_no_profile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AGENTVAULT_HOME", str(tmp_path))
    monkeypatch.setenv("AGENTVAULT_INVITE", "av1.x.y")
    code = cli.main(["enroll", "--server", "http://127.0.0.1:9", "--no-wait"])

    assert code == 1
    assert "error: transport_error:" in capsys.readouterr().err
    assert not (tmp_path / "default").exists()


@pytest.mark.parametrize(
    ("content", "code"),
    [(None, "file_error"), (b"\xff\xfe", "bad_input"), ("dir", "file_error")],
)
def test_an_unreadable_invite_file_gets_a_stable_code(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes | str | None,
    code: str,
) -> None:
    monkeypatch.setenv("AGENTVAULT_HOME", str(tmp_path / "home"))
    invite = tmp_path / "bot.invite"
    if content == "dir":
        invite.mkdir()
    elif isinstance(content, bytes):
        invite.write_bytes(content)
    argv = ["enroll", "--server", "http://127.0.0.1:9", "--no-wait"]

    assert cli.main([*argv, "--invite-file", str(invite)]) == 1
    err = capsys.readouterr().err
    assert f"error: {code}:" in err
    assert "Error:" not in err  # no exception class names
