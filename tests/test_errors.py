"""Library errors name parameters by keyword; the CLI puts its flags in their place (issue 16, point 5)."""

import ast
import pickle
import re
import warnings
from pathlib import Path

import pytest

import gigaseg
from gigaseg.errors import (
    GigasegError,
    GigasegWarning,
    InputError,
    OutputExistsError,
    SourceError,
    cli_message,
)
from gigaseg.io.sources import open_source
from gigaseg.tiler import TileGrid

PACKAGE = Path(gigaseg.__file__).parent
FLAG = re.compile(r"(?<![\w-])--[a-z]")
# Files being restructured (issue 16, the segment split) whose messages still name flags;
# drop each from here once its messages speak in parameters.
PENDING: set[str] = set()


def test_a_bad_tiling_names_its_parameters_and_the_cli_its_flags():
    with pytest.raises(InputError) as caught:
        TileGrid.create((100, 100), 32, 17)
    error = caught.value
    assert error.parameters == ("tile", "overlap")
    assert "--" not in str(error)
    assert "use a smaller overlap or a larger tile" in str(error)
    text = cli_message(error, {})
    assert "--tile must be at least twice --overlap, but --tile is 32 and --overlap is 17" in text
    assert text.endswith("use a smaller --overlap or a larger --tile")


def test_a_per_axis_value_of_the_wrong_length_names_its_parameter():
    with pytest.raises(InputError) as caught:
        TileGrid.create((100, 100), (32, 32, 32), 4)
    assert caught.value.parameters == ("tile",)
    assert cli_message(caught.value, {}).startswith("--tile has 3 values")


def test_bands_and_volume_name_their_parameters(tmp_path):
    with pytest.raises(InputError) as caught:
        open_source(tmp_path / "scan.nii.gz", bands=[1])
    assert set(caught.value.parameters) == {"bands", "volume"}
    assert "--" not in str(caught.value)
    assert cli_message(caught.value, {}) == (
        "--bands picks the channels of a raster; choose the volumes of a NIfTI file with --volume"
    )
    with pytest.raises(InputError) as caught:
        open_source(tmp_path / "volume.tif", volume=1)
    assert caught.value.parameters == ("volume",)
    # the path's "volume.tif" stays as it is
    expected = f"--volume selects volumes of a NIfTI file, and {tmp_path}/volume.tif is not one"
    assert cli_message(caught.value, {}) == expected


def test_the_flag_map_wins_over_the_usual_flag():
    error = InputError("cache_dir is not writable; cache_max too small", parameters=("cache_dir", "cache_max"))
    assert cli_message(error, {"cache_dir": "--cache"}) == "--cache is not writable; --cache-max too small"
    assert cli_message(error) == "--cache-dir is not writable; --cache-max too small"


def test_only_whole_words_that_stand_for_the_parameter_change():
    error = InputError(
        "tile_size, options.tile, 'tile', /data/tile/a.tif, tile.tif, --tile, subtile, tile: tile (tile). tile.",
        parameters=("tile",),
    )
    assert cli_message(error, {}) == (
        "tile_size, options.tile, 'tile', /data/tile/a.tif, tile.tif, --tile, subtile, --tile: --tile (--tile). --tile."
    )


def test_replacements_do_not_chain():
    error = InputError("give images and image", parameters=("images", "image"))
    assert cli_message(error, {"images": "--image", "image": "--images"}) == "give --image and --images"


def test_errors_without_parameters_and_plain_exceptions_come_back_as_they_are():
    assert cli_message(GigasegError("tile is bad"), {}) == "tile is bad"
    assert cli_message(ValueError("tile is bad"), {}) == "tile is bad"
    assert cli_message("tile is bad", {}) == "tile is bad"
    assert GigasegError("x").parameters == ()
    assert GigasegError().parameters == ()


def test_parameters_survive_pickling_as_errors_from_dask_workers_do():
    for error in (
        InputError("tile is bad", parameters=("tile",)),
        SourceError("input x does not exist", parameters=("x",)),
        OutputExistsError("output o exists; pass overwrite", parameters=("overwrite",)),
    ):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error) and back.parameters == error.parameters
    assert isinstance(OutputExistsError("o", parameters=("overwrite",)), FileExistsError)


def test_a_warning_names_its_parameters_as_an_error_does():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warning = GigasegWarning("use a smaller chunk or a larger band_memory", parameters=("chunk", "band_memory"))
        warnings.warn(warning, stacklevel=1)
    (record,) = caught
    assert record.category is GigasegWarning
    # what warnings.showwarning receives as its message
    assert cli_message(record.message, {}) == "use a smaller --chunk or a larger --band-memory"
    plain = GigasegWarning("odd input")
    assert plain.parameters == () and cli_message(plain, {}) == "odd input"


def test_gigaseg_warning_is_still_importable_from_geotiff():
    from gigaseg.io.geotiff import GigasegWarning as old

    assert old is GigasegWarning


def _messages(tree: ast.AST) -> list[ast.AST]:
    """The nodes that make user-facing text: raise statements, warnings.warn calls,
    and the returns of functions that build messages (strings with spaces)."""
    found: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            found.append(node.exc)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "warn":
            found.append(node)
        elif isinstance(node, ast.Return) and isinstance(node.value, ast.JoinedStr | ast.Constant):
            found.append(node.value)
    return found


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_no_library_message_names_a_cli_flag():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("jobs/cli") or relative in PENDING:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _messages(tree):
            offenders += [
                f"{relative}:{node.lineno}: {text!r}" for text in _strings(node) if " " in text and FLAG.search(text)
            ]
    assert not offenders, "messages that name flags; name the parameter instead:\n" + "\n".join(offenders)
