"""MATLAB .mat scenes and pixel tables (fedrs.datasets.matfile) on tiny generated files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from conftest import SHARED_DATA
from fedrs.datasets.matfile import (
    find_role,
    load_mat,
    read_pixel_table,
    read_scene,
    reshape_patches,
)
from fedrs.errors import DataError

H, W, B = 6, 5, 12


def scene_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 4, (H, W)).astype(np.uint8)
    gt[0, 0] = 1
    return {
        "hsi": rng.random((H, W, B)),
        "lidar": rng.random((H, W)) * 30.0,
        "gt": gt,
    }


def one_line_error(excinfo: pytest.ExceptionInfo[DataError]) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    err = excinfo.value
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    return text


def matlab_class(dtype: np.dtype) -> str:
    return {"f8": "double", "f4": "single", "u1": "uint8", "i2": "int16"}[dtype.str[1:]]


def write_v73(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """A file laid out like MATLAB's ``save -v7.3``: a 512-byte header as the HDF5 user block,
    arrays stored with their axes reversed, ``MATLAB_class`` attributes, text and #refs#."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, arr in arrays.items():
            arr = np.asarray(arr)
            ds = f.create_dataset(name, data=arr.T)
            ds.attrs["MATLAB_class"] = np.bytes_(matlab_class(arr.dtype))
        text = np.frombuffer("Trento".encode("utf-16-le"), dtype=np.uint16).reshape(-1, 1)
        ds = f.create_dataset("description", data=text)
        ds.attrs["MATLAB_class"] = np.bytes_("char")
        f.create_group("#refs#")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 "
    header += b"HDF5 schema 1.00 ."
    header = header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with path.open("r+b") as fh:
        fh.write(header)
    return path


# --------------------------------------------------------------------------- load_mat


def test_load_mat_v5_and_v73_agree(tmp_path: Path) -> None:
    arrays = scene_arrays()
    scipy.io.savemat(tmp_path / "v5.mat", {**arrays, "note": "text", "cell": np.array([[1]])})
    write_v73(tmp_path / "v73.mat", arrays)
    assert scipy.io.matlab.matfile_version(str(tmp_path / "v73.mat")) == (2, 0)
    v5, v73 = load_mat(tmp_path / "v5.mat"), load_mat(tmp_path / "v73.mat")
    assert set(v5) == {"hsi", "lidar", "gt", "cell"}  # the string is skipped
    assert set(v73) == {"hsi", "lidar", "gt"}  # the char array and #refs# are skipped
    for name, arr in arrays.items():
        assert v5[name].shape == v73[name].shape == arr.shape
        np.testing.assert_array_equal(v73[name], arr)
        np.testing.assert_array_equal(v5[name], arr)


def write_v73_struct(path: Path, hsi: np.ndarray, gt: np.ndarray, z: list[np.ndarray]) -> None:
    """MUUFL's layout as ``save -v7.3`` writes it: a struct ``hsi`` (an HDF5 group) with
    ``Data``, ``sceneLabels.labels`` and a cell ``Lidar`` of structs with an elevation ``z``."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w", userblock_size=512) as f:
        g = f.create_group("hsi")
        g.create_dataset("Data", data=hsi.T).attrs["MATLAB_class"] = np.bytes_("double")
        labels = g.create_group("sceneLabels").create_dataset("labels", data=gt.T)
        labels.attrs["MATLAB_class"] = np.bytes_("int16")
        refs = f.create_group("#refs#")
        items = []
        for k, arr in enumerate(z):
            item = refs.create_group(f"r{k}")
            item.create_dataset("z", data=arr.T).attrs["MATLAB_class"] = np.bytes_("double")
            items.append(item.ref)
        cell = g.create_dataset("Lidar", data=np.array([items], dtype=h5py.ref_dtype).T)
        cell.attrs["MATLAB_class"] = np.bytes_("cell")


def test_structs_and_cells_are_read_by_their_matlab_path(tmp_path: Path) -> None:
    """MUUFL's original layout, v5 and v7.3: arrays inside a struct and a cell are found by the
    parts of their path (``hsi.Data`` as hsi, ``hsi.sceneLabels.labels`` as gt); the two
    LiDAR returns tie, so LiDAR is named with --var."""
    arrays = scene_arrays()
    first, last = arrays["lidar"], arrays["lidar"] + 1.5
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = {"z": first}, {"z": last}
    muufl = {"Data": arrays["hsi"], "sceneLabels": {"labels": arrays["gt"].astype(np.int16)}}
    scipy.io.savemat(tmp_path / "v5.mat", {"hsi": {**muufl, "Lidar": cell, "info": "campus"}})
    write_v73_struct(
        tmp_path / "v73.mat", arrays["hsi"], arrays["gt"].astype(np.int16), [first, last]
    )
    for name in ("v5.mat", "v73.mat"):
        variables = load_mat(tmp_path / name)
        assert set(variables) == {
            "hsi.Data",
            "hsi.sceneLabels.labels",
            "hsi.Lidar{1}.z",
            "hsi.Lidar{2}.z",
        }, name
        with pytest.raises(DataError) as excinfo:
            read_scene([tmp_path / name])
        assert "lidar: 2 variables fit equally well by name" in one_line_error(excinfo)
        scene = read_scene([tmp_path / name], {"lidar": "hsi.Lidar{2}.z"})
        assert scene.names["hsi"].endswith(":hsi.Data")
        assert scene.names["gt"].endswith(":hsi.sceneLabels.labels")
        np.testing.assert_allclose(scene.hsi, arrays["hsi"], rtol=1e-6)
        np.testing.assert_allclose(scene.lidar[:, :, 0], last, rtol=1e-6)
        np.testing.assert_array_equal(scene.gt, arrays["gt"])


@pytest.mark.parametrize("content", ["random", "truncated", "truncated_v73", "empty", "header"])
def test_load_mat_malformed_is_one_line(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.mat"
    if content == "random":
        path.write_bytes(np.random.default_rng(1).bytes(3000))
    elif content in ("truncated", "header"):
        scipy.io.savemat(path, scene_arrays())
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if content == "truncated" else data[:128])
    elif content == "truncated_v73":
        write_v73(path, scene_arrays())
        path.write_bytes(path.read_bytes()[:1500])
    else:
        path.write_bytes(b"")
    with pytest.raises(DataError) as excinfo:
        load_mat(path)
    assert one_line_error(excinfo).startswith(f"{path}: not a readable MATLAB .mat file (")


def test_load_mat_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_mat(tmp_path / "absent.mat")


# --------------------------------------------------------------------------- roles


def test_find_role_by_name_and_by_shape() -> None:
    arrays = scene_arrays()
    named = {"Houston": arrays["hsi"], "DSM": arrays["lidar"], "GT": arrays["gt"]}
    assert find_role(named, "hsi")[0] == "Houston"
    assert find_role(named, "lidar")[0] == "DSM"
    assert find_role(named, "gt")[0] == "GT"
    anonymous = {"a": arrays["hsi"], "b": arrays["lidar"], "c": arrays["gt"].astype(float)}
    anonymous["wavelengths"] = np.linspace(380, 1050, B)[None, :]  # a row vector: ignored
    anonymous["small_cube"] = np.random.default_rng(0).random((H, W, 2))
    assert find_role(anonymous, "hsi")[0] == "a"
    assert find_role(anonymous, "gt")[0] == "c"
    with pytest.raises(DataError, match="2 variables fit equally well by shape"):
        find_role(anonymous, "lidar")  # b (H x W) and small_cube (H x W x 2)
    # a name that does not fit the role's shape is not taken: "data" here is 2-D
    assert find_role({"data": arrays["lidar"], "x": arrays["hsi"]}, "hsi")[0] == "x"


def test_find_role_explicit_and_errors() -> None:
    arrays = scene_arrays()
    variables = {"HSI.mat:data": arrays["hsi"], "LiDAR.mat:data": arrays["lidar"]}
    assert find_role(variables, "lidar", "LiDAR.mat:data")[0] == "LiDAR.mat:data"
    assert find_role(variables, "lidar", "lidar:DATA")[0] == "LiDAR.mat:data"
    with pytest.raises(DataError) as excinfo:
        find_role(variables, "hsi", "data")
    assert "give --var hsi=FILE:NAME" in one_line_error(excinfo)
    with pytest.raises(DataError) as excinfo:
        find_role(variables, "gt", "labels", "in HSI.mat")
    text = one_line_error(excinfo)
    assert "'labels' in HSI.mat" in text and "LiDAR.mat:data (6, 5) float64" in text
    with pytest.raises(DataError) as excinfo:
        find_role({"x": arrays["hsi"]}, "gt", where="in x.mat")
    assert "gt: no variable found in x.mat" in one_line_error(excinfo)
    assert "give --var gt=NAME" in str(excinfo.value)
    two_cubes = {"a": arrays["hsi"], "b": arrays["hsi"] * 2}
    with pytest.raises(DataError) as excinfo:
        find_role(two_cubes, "hsi")
    assert "give --var hsi=NAME" in one_line_error(excinfo)


# --------------------------------------------------------------------------- scenes


def test_read_scene_one_file_v5(tmp_path: Path) -> None:
    arrays = scene_arrays()
    path = tmp_path / "Houston.mat"
    scipy.io.savemat(path, {"HSI": arrays["hsi"], "LiDAR": arrays["lidar"], "gt": arrays["gt"]})
    scene = read_scene([path])
    assert scene.hsi.shape == (H, W, B) and scene.hsi.dtype == np.float32
    assert scene.lidar.shape == (H, W, 1) and scene.lidar.dtype == np.float32
    assert scene.gt.dtype == np.int64 and scene.gt_train is None and scene.gt_test is None
    np.testing.assert_allclose(scene.hsi, arrays["hsi"], rtol=1e-6)
    np.testing.assert_allclose(scene.lidar[:, :, 0], arrays["lidar"], rtol=1e-6)
    np.testing.assert_array_equal(scene.gt, arrays["gt"])
    assert scene.names == {
        "hsi": "Houston.mat:HSI",
        "lidar": "Houston.mat:LiDAR",
        "gt": "Houston.mat:gt",
    }
    assert scene.num_classes == int(arrays["gt"].max())


def test_read_scene_file_per_modality_by_shape(tmp_path: Path) -> None:
    """Trento-like: HSI.mat, LiDAR.mat, GT.mat, every variable called ``data`` (a folder is
    given: its .mat files are read); the gt is stored as double, as MATLAB often does."""
    arrays = scene_arrays()
    lidar = np.random.default_rng(3).random((H, W, 2))
    scipy.io.savemat(tmp_path / "HSI.mat", {"data": arrays["hsi"]})
    scipy.io.savemat(tmp_path / "LiDAR.mat", {"data": lidar})
    scipy.io.savemat(tmp_path / "GT.mat", {"data": arrays["gt"].astype(float)})
    scene = read_scene([tmp_path])
    assert scene.names == {"hsi": "HSI.mat:data", "gt": "GT.mat:data", "lidar": "LiDAR.mat:data"}
    assert scene.lidar.shape == (H, W, 2)
    np.testing.assert_array_equal(scene.gt, arrays["gt"])


def test_read_scene_v73_with_train_test_maps(tmp_path: Path) -> None:
    arrays = scene_arrays()
    train = np.where(np.arange(H * W).reshape(H, W) % 2 == 0, arrays["gt"], 0).astype(np.uint8)
    test = (arrays["gt"] - train).astype(np.uint8)
    path = write_v73(
        tmp_path / "trento.mat",
        {"HSI": arrays["hsi"], "LiDAR": arrays["lidar"], "TRLabel": train, "TSLabel": test},
    )
    scene = read_scene([path])
    assert scene.hsi.shape == (H, W, B)
    np.testing.assert_allclose(scene.hsi, arrays["hsi"], rtol=1e-6)
    np.testing.assert_array_equal(scene.gt_train, train)
    np.testing.assert_array_equal(scene.gt_test, test)
    np.testing.assert_array_equal(scene.gt, arrays["gt"])  # the union
    assert scene.names["gt"] == "trento.mat:TRLabel + trento.mat:TSLabel"


def test_read_scene_explicit_names(tmp_path: Path) -> None:
    arrays = scene_arrays()
    scipy.io.savemat(tmp_path / "a.mat", {"x": arrays["hsi"], "y": arrays["lidar"]})
    scipy.io.savemat(tmp_path / "b.mat", {"y": arrays["gt"], "z": arrays["gt"] * 2})
    paths = [tmp_path / "a.mat", tmp_path / "b.mat"]
    with pytest.raises(DataError) as excinfo:
        read_scene(paths)  # two integer maps: which is gt?
    assert "give --var gt=NAME" in one_line_error(excinfo)
    scene = read_scene(paths, {"gt": "z", "lidar": "a:y"})
    assert scene.names == {"gt": "b.mat:z", "lidar": "a.mat:y", "hsi": "a.mat:x"}
    np.testing.assert_array_equal(scene.gt, arrays["gt"] * 2)
    with pytest.raises(DataError, match=r"matches a\.mat:y, b\.mat:y"):
        read_scene(paths, {"gt": "y"})
    with pytest.raises(DataError, match="unknown role 'dsm'"):
        read_scene(paths, {"dsm": "y"})


def test_read_scene_mismatched_size(tmp_path: Path) -> None:
    arrays = scene_arrays()
    scipy.io.savemat(
        tmp_path / "s.mat",
        {"HSI": arrays["hsi"], "LiDAR": arrays["lidar"][:, :-1], "gt": arrays["gt"]},
    )
    with pytest.raises(DataError) as excinfo:
        read_scene([tmp_path / "s.mat"])
    text = one_line_error(excinfo)
    assert text.startswith("height and width do not agree")
    assert "lidar s.mat:LiDAR (6, 4)" in text and "hsi s.mat:HSI (6, 5, 12)" in text


def test_read_scene_bad_values(tmp_path: Path) -> None:
    arrays = scene_arrays()
    cube = arrays["hsi"].copy()
    cube[1, 2, 3] = np.nan
    cube[0, 0, 0] = np.inf
    scipy.io.savemat(tmp_path / "s.mat", {**arrays, "hsi": cube})
    with pytest.raises(DataError) as excinfo:
        read_scene([tmp_path / "s.mat"])
    assert one_line_error(excinfo) == "hsi s.mat:hsi: 2 of 360 values are NaN or infinite"
    scipy.io.savemat(tmp_path / "s.mat", {**arrays, "gt": arrays["gt"] + 0.5})
    with pytest.raises(DataError, match="labels must be whole numbers"):
        read_scene([tmp_path / "s.mat"], {"gt": "gt"})
    scipy.io.savemat(tmp_path / "s.mat", {**arrays, "gt": arrays["gt"].astype(int) - 5})
    with pytest.raises(DataError, match="labels must be >= 0"):
        read_scene([tmp_path / "s.mat"])


# --------------------------------------------------------------------------- pixel tables


def matlab_flatten(patch: np.ndarray) -> list[float]:
    """MATLAB's ``A(:)`` of a k x k x C array: the first index varies fastest."""
    k, _, channels = patch.shape
    return [patch[i, j, c] for c in range(channels) for j in range(k) for i in range(k)]


def test_reshape_patches_matlab_order() -> None:
    # A(i, j, c) = 100 i + 10 j + c (1-based), k = 2, C = 2, written out as MATLAB's A(:)
    row = [111, 211, 121, 221, 112, 212, 122, 222]
    out = reshape_patches(np.array([row, [v + 1000 for v in row]], dtype=float), 2)
    assert out.shape == (2, 2, 2, 2) and out.dtype == np.float32
    for i in range(2):
        for j in range(2):
            for c in range(2):
                assert out[0, c, i, j] == 100 * (i + 1) + 10 * (j + 1) + (c + 1)
                assert out[1, c, i, j] == 1000 + 100 * (i + 1) + 10 * (j + 1) + (c + 1)
    with pytest.raises(DataError, match="not a multiple of k\\*k = 9"):
        reshape_patches(np.zeros((2, 10)), 3)


def write_houston_like(root: Path, n: int = 20, k: int = 3) -> tuple[Path, dict[str, np.ndarray]]:
    """pixels/ (HSI_TrSet, LiDAR_TrSet, TrLabel, LiDAR_TeSet, TeLabel) and the LiDAR patches
    cut from one raster, in MATLAB order (patches/LiDAR_TrSet.mat) and in a wrong order."""
    rng = np.random.default_rng(7)
    raster = rng.random((12, 12, 3))
    rows, cols = rng.integers(1, 11, n), rng.integers(1, 11, n)
    r = k // 2
    cut = [raster[y - r : y + r + 1, x - r : x + r + 1, :] for y, x in zip(rows, cols, strict=True)]
    data = {
        "HSI_TrSet": rng.random((n, 16)),
        "LiDAR_TrSet": raster[rows, cols, :],
        "TrLabel": (np.arange(n) % 5 + 1).astype(np.uint8)[:, None],
        "LiDAR_TeSet": rng.random((8, 3)),
        "TeLabel": (np.arange(8) % 5 + 1).astype(np.uint8)[:, None],
    }
    (root / "pixels").mkdir()
    for name, arr in data.items():
        scipy.io.savemat(root / "pixels" / f"{name}.mat", {name: arr})
    (root / "patches").mkdir()
    good = np.array([matlab_flatten(p) for p in cut])
    wrong = np.array([p.reshape(-1) for p in cut])  # row-major, channel fastest
    scipy.io.savemat(root / "patches" / "LiDAR_TrSet.mat", {"LiDAR_TrSet": good})
    scipy.io.savemat(root / "patches" / "wrong.mat", {"LiDAR_TrSet": wrong})
    return root / "pixels", {**data, "cut": np.stack(cut)}


def test_read_pixel_table_houston_like(tmp_path: Path) -> None:
    folder, data = write_houston_like(tmp_path)
    table = read_pixel_table(folder)
    assert {m: a.shape for m, a in table.modalities.items()} == {"hsi": (20, 16), "lidar": (20, 3)}
    assert table.labels.dtype == np.int64 and table.labels.min() == 0 and table.labels.max() == 4
    assert table.test_modalities["lidar"].shape == (8, 3) and table.test_labels is not None
    assert table.test_labels.tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert table.names["lidar"] == "LiDAR_TrSet.mat:LiDAR_TrSet"
    assert table.names["test_labels"] == "TeLabel.mat:TeLabel"
    assert table.num_classes == 5

    table = read_pixel_table(
        folder, patches={"lidar": (tmp_path / "patches" / "LiDAR_TrSet.mat", 3)}
    )
    lidar = table.modalities["lidar"]
    assert lidar.shape == (20, 3, 3, 3) and lidar.dtype == np.float32
    np.testing.assert_allclose(lidar, data["cut"].transpose(0, 3, 1, 2), rtol=1e-6)
    assert table.names["lidar"].endswith("patches/LiDAR_TrSet.mat:LiDAR_TrSet")

    with pytest.raises(DataError) as excinfo:
        read_pixel_table(folder, patches={"lidar": (tmp_path / "patches" / "wrong.mat", 3)})
    assert "lidar: patches do not match the pixels" in one_line_error(excinfo)


def test_read_pixel_table_names_and_errors(tmp_path: Path) -> None:
    folder, data = write_houston_like(tmp_path)
    scipy.io.savemat(folder / "extra.mat", {"labels0": data["TrLabel"].astype(float) - 1})
    table = read_pixel_table(folder, {"labels": "labels0", "dsm": "LiDAR_TrSet"})
    assert set(table.modalities) == {"hsi", "lidar", "dsm"}
    assert table.labels.tolist() == (np.arange(20) % 5).tolist()  # has a 0: kept as is
    assert table.test_labels is not None and table.test_labels.min() == 1  # not shifted either
    scipy.io.savemat(folder / "TrLabel.mat", {"TrLabel": data["TrLabel"][:-1]})
    with pytest.raises(DataError) as excinfo:
        read_pixel_table(folder)
    assert one_line_error(excinfo).startswith("training rows do not agree: labels")
    with pytest.raises(DataError, match="no such folder"):
        read_pixel_table(tmp_path / "absent")


def test_read_real_houston2013() -> None:
    root = SHARED_DATA / "houston2013"
    if not root.is_dir():
        pytest.skip(f"real data not available: {root}")
    table = read_pixel_table(
        root / "pixels", patches={"lidar": (root / "lidar-patches" / "LiDAR_TrSet.mat", 7)}
    )
    assert table.modalities["hsi"].shape == (2832, 144)
    assert table.modalities["lidar"].shape == (2832, 21, 7, 7)
    assert table.labels.min() == 0 and table.labels.max() == 14
    assert np.bincount(table.labels).min() >= 181
    assert table.test_modalities["lidar"].shape == (12197, 21)
    assert table.test_labels is not None and table.test_labels.shape == (12197,)
    pixels = load_mat(root / "pixels" / "LiDAR_TrSet.mat")["LiDAR_TrSet"]
    np.testing.assert_array_equal(table.modalities["lidar"][:, :, 3, 3], pixels.astype(np.float32))
