# The board's OSCORE context file, read and checked at boot, its keys
# derived, and the link (edge/oscore.py) set up with them: boot-only code,
# released once the link has its state (a function object and a global
# less each in RAM for as long as the meter runs).
#
# The file (`oscore_file`, written by `microgrid flash`) is JSON: master
# secret and salt, sender and recipient ids, optional ID context, hex. An
# unusable file is a ValueError that never shows the value (it may be the
# master secret): the board goes to safe mode rather than send readings in
# clear.

import binascii
import json

from shared import oscore as core


def _hex(doc, key, path, size=None, optional=False):
    v = doc.get(key)
    if v is None and optional:
        return None
    try:
        raw = binascii.unhexlify(v)
    except (TypeError, ValueError):
        # Never echo the value: it may be the master secret.
        raise ValueError("oscore context %s: %s is not hex" % (path, key))
    if size is not None and not size[0] <= len(raw) <= size[1]:
        raise ValueError("oscore context %s: %s has %d bytes, expected %d..%d" % (path, key, len(raw), size[0], size[1]))
    return raw


def load_context(path):
    """The shared.oscore.Context in `path`, or None when the board has no
    context file; ValueError when it is unusable."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        raise ValueError("oscore context %s is not JSON: provision it again with `microgrid flash`" % path)
    if not isinstance(doc, dict):
        raise ValueError("oscore context %s: expected a JSON object" % path)
    secret = _hex(doc, "secret", path, (16, 64))
    salt = _hex(doc, "salt", path, (0, 64))
    sid = _hex(doc, "sender_id", path, (0, core.MAX_ID_LEN))
    rid = _hex(doc, "recipient_id", path, (0, core.MAX_ID_LEN))
    idc = _hex(doc, "id_context", path, (0, 32), optional=True)
    return core.Context(secret, salt, sid, rid, idc)


def open_link(path, block=64):
    """The link (the module edge/oscore.py) for the context in `path`, its
    sequence numbers reserved `block` at a time in `path`.seq.0/.1; None
    when the board has no context; ValueError when the file is unusable.
    A journal written for another context (the board was provisioned
    anew) starts over at 0, which is safe because a new context has new
    keys. This module and the protocol code are released on return."""
    from edge import oscore as link, release
    from edge.journal import Journal

    try:
        ctx = load_context(path)
        if ctx is None:
            return None
        link.sender_id = ctx.sender_id
        link._packed = ctx.pack()
        link._path = path + ".seq"
        link._block = block
        state = Journal(link._path, slot_size=96).load() or {}
        if state.get("sid") != ctx.sender_id.hex():
            state = {}
        link._next = link._limit = state.get("reserved", 0)  # nothing reserved by this boot yet
        link.echo = link.echo_asked = link.last_ignored = None
        link.ignored = 0
        return link
    finally:
        for name in ("edge.oscore_context", "shared.oscore", "shared.ccm", "shared.aes", "shared.aes_soft"):
            release(name)
