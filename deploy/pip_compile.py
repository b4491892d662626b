"""pip-compile whose ``--generate-hashes`` uses the sha256 that the index publishes for each file.

pip-tools (7.6) asks the index's JSON API for hashes and, when that fails, downloads and hashes
every file of every pinned release. Against our registry the JSON API lookup fails (wrong address
and relative file URLs), so a plain run downloads every wheel of every platform: about 0.9 GB for
PyAV alone and tens of GB for torch with its CUDA libraries. The simple index that pip resolves
against already lists a sha256 for every file (PEP 503/691), so this wrapper takes the hashes
from there and hashes a file itself only when the index gives none. Everything else is plain
pip-compile: run ``python deploy/pip_compile.py <pip-compile arguments>`` with the Python whose
pip-tools should resolve (see deploy/compile-requirements.sh).

The registry also publishes no separate metadata files (PEP 658), so pip reads each wheel's
metadata with HTTP range requests (``--use-feature=fast-deps``, passed by the script) and, at the
end of resolution, would download every resolved wheel in full (several GB for torch and the
nvidia-* libraries). Resolution needs only the metadata, so that last step is skipped here.
"""

import sys

from pip._internal.operations.prepare import RequirementPreparer
from piptools.repositories.pypi import PyPIRepository
from piptools.scripts.compile import cli


def _req_hashes_from_index(self: PyPIRepository, ireq) -> set[str]:
    hashes = set()
    for candidate in self._get_matching_candidates(ireq):
        link = candidate.link
        if link.hash_name == "sha256" and link.hash:
            hashes.add(f"sha256:{link.hash}")
        else:
            hashes.add(self._get_file_hash(link))
    return hashes


def _skip_full_downloads(self: RequirementPreparer, reqs, parallel_builds: bool = False) -> None:
    """Leaves lazily read wheels undownloaded: resolution already has their metadata."""


if __name__ == "__main__":
    PyPIRepository._get_req_hashes = _req_hashes_from_index
    RequirementPreparer.prepare_linked_requirements_more = _skip_full_downloads
    sys.exit(cli())
