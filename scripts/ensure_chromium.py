"""Browser tests drive Debian's Chromium (playwright's own browser download cannot work offline)."""
import os
import shutil
import subprocess
import sys

if shutil.which("chromium") or os.path.exists("/usr/bin/chromium"):
    sys.exit(0)
if os.geteuid() != 0:
    sys.exit("Chromium is missing: sudo apt-get install -y chromium (browser tests need it)")
env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
