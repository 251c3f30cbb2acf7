"""One-line error summaries: the line of a library's message that says what went wrong."""

import SimpleITK as sitk
import pytest

from paresseg_jax.errors import error_line


def test_simpleitk_error_gives_its_reason_not_its_source_location(tmp_path):
    bad = tmp_path / "pv.nii.gz"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(RuntimeError) as caught:
        sitk.ReadImage(str(bad))
    assert str(caught.value).startswith("Exception thrown in SimpleITK")
    line = error_line(caught.value)
    assert str(bad) in line and ".cxx" not in line


def test_other_errors_give_their_first_line_cut_to_200_characters():
    assert error_line(ValueError("tensorstore: bad chunk\n  at offset 12\n  details")) == "tensorstore: bad chunk"
    assert error_line(ValueError("x" * 500)) == "x" * 200
    assert error_line(KeyError()) == "KeyError"
