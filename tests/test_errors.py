"""mosaicod.errors helpers."""

from mosaicod import errors


def test_first_line_of_an_exception_message():
    assert errors.first_line(ValueError("  bad thing\nTraceback detail\n")) == "bad thing"
    assert errors.first_line(ValueError("")) == "ValueError"  # empty message: the type
    assert errors.first_line(OSError(), "?") == "?"
