"""What the daemons' exit codes mean, for systemd and for scripts (the shipped units rely on them).

The units say ``Restart=always`` with ``RestartPreventExitStatus=`` listing ``DELIBERATE``: a daemon
is restarted after anything but a deliberate exit. A member exits ``FINISHED`` only on a signed
end-of-federation from the server (``securefed.protocol.ending``) or when it was asked to stop; a
server that goes away is an outage the member waits out, whatever the server's exit code.
"""

from __future__ import annotations

FINISHED = 0  # nothing left to do: the federation ended (signed end sent / received), or stopped on request
FAULT = 1  # an unexpected fault (a full disk, a bug): a restart resumes
CONFIG = 2  # configuration or certificate problem: a restart cannot fix it (the line says what to change)
SERVER_UNREACHABLE = 3  # member: no server for connection.give_up_after_s: a restart tries again
GAVE_UP = 4  # server: federation.max_attempts spent (the signed end names the cause): nothing left to do

DELIBERATE = (FINISHED, CONFIG, GAVE_UP)  # the units' RestartPreventExitStatus
