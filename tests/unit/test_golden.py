"""tests/golden.py: a golden file is compared, never made up by the run that checks it."""

import pytest

from tests.golden import UPDATE_ENV, assert_golden


def test_missing_golden_file_fails_and_is_not_written(tmp_path, monkeypatch):
    """No golden file: the check fails, says how to write it deliberately, writes nothing."""
    monkeypatch.delenv(UPDATE_ENV, raising=False)
    path = tmp_path / "golden" / "job.sh"
    with pytest.raises(AssertionError) as failed:
        assert_golden(str(path), "#!/bin/sh\n")
    assert f"golden file {path} is missing" in str(failed.value)
    assert f"{UPDATE_ENV}=1" in str(failed.value)
    assert not path.exists() and not path.parent.exists()


def test_matching_golden_file_passes_and_a_different_one_fails(tmp_path, monkeypatch):
    monkeypatch.delenv(UPDATE_ENV, raising=False)
    path = tmp_path / "job.sh"
    path.write_text("#!/bin/sh\necho a\n")
    assert_golden(str(path), "#!/bin/sh\necho a\n")
    with pytest.raises(AssertionError, match=r"job\.sh differs from the golden file"):
        assert_golden(str(path), "#!/bin/sh\necho b\n")
    assert path.read_text() == "#!/bin/sh\necho a\n"


def test_update_asked_in_the_environment_writes_the_golden_file(tmp_path, monkeypatch):
    """WFM_UPDATE_GOLDEN=1: a missing or stale file is (re)written from the code."""
    monkeypatch.setenv(UPDATE_ENV, "1")
    missing, stale = tmp_path / "new" / "a.json", tmp_path / "b.json"
    stale.write_text("old\n")
    assert_golden(str(missing), "{}\n")
    assert_golden(str(stale), "new\n")
    assert missing.read_text() == "{}\n" and stale.read_text() == "new\n"


def test_only_the_exact_value_1_asks_for_an_update(tmp_path, monkeypatch):
    monkeypatch.setenv(UPDATE_ENV, "yes")
    with pytest.raises(AssertionError, match="is missing"):
        assert_golden(str(tmp_path / "x.sh"), "x\n")
    assert not (tmp_path / "x.sh").exists()
