"""Profiles: where they live, their permissions, the token cache and the lock."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agentvault_client.errors import NotEnrolledError, ProfileError
from agentvault_client.profile import Profile, ProfileLock, home_dir


def test_the_home_is_read_from_the_environment_at_call_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AGENTVAULT_HOME", str(tmp_path / "a"))
    assert home_dir() == tmp_path / "a"
    monkeypatch.setenv("AGENTVAULT_HOME", str(tmp_path / "b"))
    assert home_dir() == tmp_path / "b"
    monkeypatch.delenv("AGENTVAULT_HOME")
    assert home_dir() == Path.home() / ".agentvault"


def test_a_new_profile_is_private(tmp_path: Path) -> None:
    profile = Profile.create("laptop", server_url="http://x/", home=tmp_path)

    assert stat.S_IMODE(profile.path.stat().st_mode) == 0o700
    assert stat.S_IMODE(profile.config_path.stat().st_mode) == 0o600
    assert Profile.load("laptop", home=tmp_path).server_url == "http://x"


def test_it_refuses_a_profile_others_can_read(tmp_path: Path) -> None:
    profile = Profile.create("laptop", server_url="http://x", home=tmp_path)
    profile.path.chmod(0o755)

    with pytest.raises(ProfileError, match="chmod 700"):
        Profile.load("laptop", home=tmp_path)


def test_a_missing_profile_says_to_enroll(tmp_path: Path) -> None:
    with pytest.raises(NotEnrolledError, match="agentvault enroll"):
        Profile.load("nope", home=tmp_path)


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 65])
def test_it_rejects_unsafe_profile_names(name: str, tmp_path: Path) -> None:
    with pytest.raises(ProfileError):
        Profile.locate(name, home=tmp_path)


def test_creating_a_profile_twice_fails(tmp_path: Path) -> None:
    Profile.create("laptop", server_url="http://x", home=tmp_path)
    with pytest.raises(ProfileError, match="exists already"):
        Profile.create("laptop", server_url="http://x", home=tmp_path)


def test_the_token_cache_is_private_and_expires(tmp_path: Path) -> None:
    profile = Profile.create("laptop", server_url="http://x", home=tmp_path)
    profile.config["device_id"] = "d1"

    profile.write_token("tok", 900)
    assert stat.S_IMODE(profile.token_path.stat().st_mode) == 0o600
    assert profile.read_token() == "tok"

    profile.write_token("tok", 30)
    assert profile.read_token() is None  # less than a minute left
    profile.config["device_id"] = "d2"
    profile.write_token("tok", 900)
    profile.config["device_id"] = "d3"
    assert profile.read_token() is None  # another device's token


def test_the_lock_tells_when_another_process_held_it(tmp_path: Path) -> None:
    first, second = ProfileLock(tmp_path / "lock"), ProfileLock(tmp_path / "lock")

    assert first.try_acquire() is True  # first use: load the state
    assert second.try_acquire() is None  # held (flock is per open file)
    first.release()
    assert first.try_acquire() is False  # nobody else held it meanwhile
    first.release()
    assert second.try_acquire() is True  # first held it: reload
    second.release()
    assert first.try_acquire() is True
    first.release()
