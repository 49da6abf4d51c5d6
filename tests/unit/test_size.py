import pytest

from wfm_orchestrator.errors import SizeError
from wfm_orchestrator.size import bytes_to_mb_down, bytes_to_mb_up, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1024", 1024),
        ("1K", 1024),
        ("1KB", 1024),
        ("1KiB", 1024),
        ("5GB", 5 * 1024**3),
        ("5G", 5 * 1024**3),
        ("2TiB", 2 * 1024**4),
        ("1.5T", int(1.5 * 1024**4)),
        ("500MB", 500 * 1024**2),
        ("1P", 1024**5),
        (" 3 M ", 3 * 1024**2),
    ],
)
def test_parse_size_uses_binary_multiples_as_slurm(text, expected):
    """Units K..P are binary multiples; a bare number is bytes."""
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "5XB", "-1G", "1e3", "5 G B", "iB", "1..5G", "0x10"])
def test_parse_size_refuses_what_is_not_a_size(text):
    """A malformed size raises SizeError naming the value."""
    with pytest.raises(SizeError) as e:
        parse_size(text)
    assert repr(text) in str(e.value)


def test_parse_size_refuses_absurd_sizes():
    """Sizes beyond an exabyte are refused instead of overflowing int64 later."""
    with pytest.raises(SizeError):
        parse_size("999999999P")


def test_mb_rounding_up_for_demands_down_for_capacities():
    """Demands round up to whole MB, capacities round down."""
    assert bytes_to_mb_up(1) == 1
    assert bytes_to_mb_up(1024 * 1024) == 1
    assert bytes_to_mb_up(1024 * 1024 + 1) == 2
    assert bytes_to_mb_down(1024 * 1024 - 1) == 0
    assert bytes_to_mb_down(3 * 1024 * 1024 + 5) == 3
