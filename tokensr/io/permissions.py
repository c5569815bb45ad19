"""The permissions a new file normally gets here: ``0o666`` less the process umask.

Atomic writes create a temporary file with :func:`tempfile.mkstemp`, which is always ``0600``;
chmod-ing it to :data:`NEW_FILE_MODE` before the rename gives outputs, checkpoints and exports
the same permissions as any file the user's shell would create. The umask is read once, at
import (reading it means setting it, so it is set straight back).
"""

from __future__ import annotations

import os

_UMASK = os.umask(0o022)
os.umask(_UMASK)
NEW_FILE_MODE = 0o666 & ~_UMASK
