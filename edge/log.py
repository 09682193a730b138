# Tiny leveled logger for the firmware. Lines go to the console (serial on
# a board, stdout under the unix port) and the last few are kept in RAM so
# the technician console can show them without a filesystem.

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40
# The config's names of the levels, DEBUG .. ERROR in order, and how a
# line shows them (constant tuples: no heap on a board).
LEVELS = ("debug", "info", "warning", "error")
_SHOWN = ("DEBUG", "INFO", "WARN", "ERROR")

level = INFO
_recent = []
# The console's `log` shows 10 by default. Bounded in count and length, the
# ring holds at most ~1.6 KB of a board's heap however long it runs.
RECENT_MAX = 10
LINE_MAX = 120


def set_level(name):
    """The level named as the config names it (log_level)."""
    global level
    level = (LEVELS.index(name) + 1) * 10


def log(lvl, tag, msg):
    if lvl < level:
        return
    i = lvl // 10 - 1
    line = "%s %s: %s" % (_SHOWN[i] if lvl % 10 == 0 and 0 <= i < 4 else str(lvl), tag, msg)
    _recent.append(line[:LINE_MAX])
    if len(_recent) > RECENT_MAX:
        _recent.pop(0)
    print(line)


def debug(tag, msg):
    log(DEBUG, tag, msg)


def info(tag, msg):
    log(INFO, tag, msg)


def warning(tag, msg):
    log(WARNING, tag, msg)


def error(tag, msg):
    log(ERROR, tag, msg)


def recent():
    return list(_recent)
