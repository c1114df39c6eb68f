"""An offline ``gs://`` store for tests (the ``bucket`` fixture of ``tests/conftest.py``).

etils.epath's ``gs`` backend is replaced by one that maps ``gs://B/P`` to ``<root>/B/P``;
Orbax keeps taking its GCS code paths (it sees ``gs://``: commit_success.txt instead of
renames), except two that need the network: TensorStore's ``gcs`` kvstore driver (given
the same local folder through the ``file`` driver instead) and the bucket's
hierarchical-namespace lookup (google-cloud-storage; answered "no").
"""
import os

from etils.epath import backend as backend_lib
from etils.epath import gpath


class _LocalBucket(backend_lib._OsPathBackend):  # pylint: disable=protected-access
  """epath backend serving ``gs://B/P`` from ``<root>/B/P``."""

  def __init__(self, root):
    self.root = str(root)
    self.writes = []

  def local(self, path):
    path = os.fspath(path)
    if path.startswith(self.root + os.sep):   # the base class calls itself with it
      return path
    assert path.startswith("gs://"), path
    return os.path.join(self.root, path[len("gs://"):])

  def _url(self, path):
    return "gs://" + os.path.relpath(os.fspath(path), self.root)

  def open(self, path, mode):
    if "w" in mode:
      self.writes.append(os.fspath(path))
    return super().open(self.local(path), mode)

  def exists(self, path):
    return super().exists(self.local(path))

  def isdir(self, path):
    return super().isdir(self.local(path))

  def listdir(self, path):
    return super().listdir(self.local(path))

  def glob(self, path):
    return [self._url(p) for p in super().glob(self.local(path))]

  def walk(self, top, *, top_down=True, on_error=None):
    for root, dirs, files in super().walk(self.local(top), top_down=top_down,
                                          on_error=on_error):
      yield self._url(root), dirs, files

  def makedirs(self, path, *, exist_ok=False, mode=None):
    super().makedirs(self.local(path), exist_ok=exist_ok, mode=mode)

  def mkdir(self, path, *, exist_ok=False, mode=None):
    super().mkdir(self.local(path), exist_ok=exist_ok, mode=mode)

  def rmtree(self, path):
    super().rmtree(self.local(path))

  def remove(self, path):
    super().remove(self.local(path))

  def rename(self, path, dst):
    super().rename(self.local(path), self.local(dst))

  def replace(self, path, dst):
    super().replace(self.local(path), self.local(dst))

  def copy(self, path, dst, overwrite):
    super().copy(self.local(path), self.local(dst), overwrite)

  def stat(self, path):
    return super().stat(self.local(path))


def make_bucket(tmp_path, monkeypatch):
  """An offline ``gs://`` store (module docstring); the cwd is an empty folder."""
  from orbax.checkpoint._src.path import gcs_utils  # pylint: disable=import-outside-toplevel
  from orbax.checkpoint._src.serialization import tensorstore_utils as tsu  # pylint: disable=import-outside-toplevel
  (tmp_path / "store").mkdir()
  (tmp_path / "cwd").mkdir()
  store = _LocalBucket(tmp_path / "store")
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", store)  # pylint: disable=protected-access
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  normalize = tsu._normalize_path  # pylint: disable=protected-access
  monkeypatch.setattr(tsu, "_use_gcs_driver", lambda directory: False)
  monkeypatch.setattr(tsu, "_normalize_path", lambda p: normalize(
      store.local(p) if p.startswith("gs://") else p))
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda p: False)
  monkeypatch.chdir(tmp_path / "cwd")
  return store


def tree(root):
  return sorted(os.path.relpath(os.path.join(r, n), root)
                for r, ds, fs in os.walk(root) for n in ds + fs)


