"""The one strict options reader: every bad value is an OptionError naming its field."""

from __future__ import annotations

import math

import pytest


@pytest.mark.parametrize("reader, value, field", [
    ("flag", "ture", "early_stop"), ("flag", {"x": 1}, "early_stop"), ("flag", [1], "crop_region"),
    ("flag", 2, "reset_state"), ("integer", True, "patience"), ("integer", 1.5, "patience"),
    ("integer", "3.0", "patience"), ("number", math.nan, "score"), ("number", "1e999", "score"),
    ("identifier", "", "image"), ("identifier", "../x", "image"), ("identifier", "/tmp/x", "image"),
    ("identifier", "a/b", "tag"), ("identifier", ".hidden", "tag"), ("label_name", "image", "--conf labels"),
    ("label_name", "a/b", "--conf labels"), ("json_object", "[1]", "params"), ("json_object", "{", "params"),
])
def test_bad_values_name_their_field(reader, value, field):
    from lib import options

    with pytest.raises(options.OptionError) as err:
        getattr(options, reader)(value, field)
    assert str(err.value).startswith(f"{field}: ")


def test_text_forms_of_scalars_are_read_exactly():
    from lib import options

    assert options.flag("TRUE", "f") is True and options.flag("off", "f") is False and options.flag(0, "f") is False
    assert options.integer("3", "n") == 3 and options.integer(4.0, "n") == 4
    assert options.number("0.5", "x") == 0.5
    assert options.identifier("1.2.840.113619.2.55.3", "image") == "1.2.840.113619.2.55.3"  # a series UID
    assert options.label_name("left kidney", "labels") == "left kidney"


def test_points_are_json_numbers_within_bounds():
    from lib import options

    assert options.point_list([1, 2, 3], "foreground") == [[1.0, 2.0, 3.0]]  # one bare point
    for bad in ([[True, 1, 1]], [["1", "2", "3"]], [[int("9" * 401), 1, 1]], [[1, 2]] * 501, [[1]], "1,2,3"):
        with pytest.raises(options.OptionError) as err:
            options.point_list(bad, "foreground")
        assert str(err.value).startswith("foreground")
    with pytest.raises(options.OptionError) as err:
        options.point_list([[1, 2, 3]] * 501, "foreground")
    assert err.value.status == 413
    with pytest.raises(options.OptionError):
        options.box([0, 10, 0, math.inf, 3, 3], "roi")


def test_result_format_allows_only_known_types():
    from lib import options

    fmt = options.result_format({"result_extension": ".NRRD", "result_dtype": "UINT8", "result_compress": "false"})
    assert fmt == options.ResultFormat(".nrrd", "uint8", False)
    for request, field in (({"result_extension": ".exe"}, "result_extension"),
                           ({"result_extension": "../../x"}, "result_extension"),
                           ({"result_dtype": 5}, "result_dtype"), ({"result_compress": "maybe"}, "result_compress")):
        with pytest.raises(options.OptionError) as err:
            options.result_format(request)
        assert str(err.value).startswith(field)


def test_conf_uses_the_same_reader():
    from lib.app_config import AppConfig
    from lib.options import OptionError

    for conf, field in (({"early_stop": "ture"}, "--conf early_stop"), ({"labels": "liver,roi"}, "--conf labels"),
                        ({"upload_max_mb": "lots"}, "--conf upload_max_mb")):
        with pytest.raises(OptionError) as err:
            AppConfig.from_conf("apps/medsam2", conf)
        assert str(err.value).startswith(field)
