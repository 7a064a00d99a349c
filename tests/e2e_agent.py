"""A tiny agent for the end-to-end tests, speaking the bridge's lines protocol.

Each input line is ``{"id", "text", ...}``; the answer is
``{"text": "echo:" + text}``. ``slow:<seconds>`` sleeps before answering
(so a test can kill the program mid-message). The process id is written to
``$E2E_PID_FILE`` at start.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    """Answer every request line until standard input closes."""
    pid_file = os.environ.get("E2E_PID_FILE")
    if pid_file:
        with open(pid_file, "w") as handle:
            handle.write(str(os.getpid()))
    for line in sys.stdin:
        request = json.loads(line)
        text = request["text"]
        if text.startswith("slow:"):
            time.sleep(float(text.split(":", 1)[1].split()[0]))
        answer = {"text": "echo:" + text}
        sys.stdout.write(json.dumps(answer, ensure_ascii=False) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
