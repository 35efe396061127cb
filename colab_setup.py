"""Set the course up in a running Colab kernel; each chapter's first cell clones the repository and runs this.

It installs only what Colab lacks, pinning the torch Colab ships (its CUDA build is never replaced), then makes
``import ffstudy`` find the checkout in this same process: an editable install's path file is read only when an
interpreter starts, so the checkout goes on ``sys.path`` here (new processes, like ``!ffstudy ...``, read the
path file). No runtime restart is needed, unless pip reports it changed a package this kernel had already imported
(numpy, say): then restart once and run the cell again.
"""
import importlib
import importlib.metadata
import os
import subprocess
import sys
import tempfile

CHECKOUT = os.path.dirname(os.path.abspath(__file__))

with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as keep:
    keep.write(f"torch=={importlib.metadata.version('torch')}\n")  # Colab's own build stays
subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{CHECKOUT}[colab]", "-c", keep.name],
               check=True)
if CHECKOUT not in sys.path:
    sys.path.insert(0, CHECKOUT)
importlib.invalidate_caches()
os.chdir(os.path.join(CHECKOUT, "notebooks"))
