"""The meter's updater (edge/ota.py) on the esp32.Partition stand-in
(edge/hal/partition.py), in both MicroPython runtimes: A/B switch, trial,
confirmation, rollback, every refusal, and power cuts at random points.

Releases are made on the CPython side with shared/release.py, as
`microgrid release` makes them; the meter side runs in MicroPython."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

from microgrid.shared import release, secp256k1

from ..conftest import REPO, run_micropython

KEY = bytes(range(1, 33))
OTHER = bytes(range(3, 35))
PUB = secp256k1.public_key(KEY)
POWER_CUTS = int(os.environ.get("MICROGRID_OTA_POWER_CUTS", "300"))


def image(version: str, size: int, seed: int) -> bytes:
    """A unix-port stand-in image: a header naming its version, then bytes."""
    head = b"MGFW " + json.dumps({"version": version}).encode() + b"\n"
    rng = random.Random(seed)
    return head + bytes(rng.getrandbits(8) for _ in range(size - len(head)))


def put_releases(d: Path) -> dict[str, str]:
    """Images and signed manifests for every case, as files in `d`."""
    old = image("0.2.0", 9000, 1)
    new = image("0.3.0", 14000, 2)
    (d / "old.img").write_bytes(old)
    (d / "new.img").write_bytes(new)
    (d / "new.tbl").write_bytes(release.chunk_table(new))
    rel = {
        "ok": release.sign(KEY, release.make_manifest(new, "0.3.0", "unix", "0.2.0", "ok")),
        "rotate": release.sign(KEY, release.make_manifest(new, "0.3.0", "unix", "0.2.0", "rotate",
                                                           [secp256k1.public_key(OTHER)])),
        "other_key": release.sign(OTHER, release.make_manifest(new, "0.3.0", "unix", "0.2.0")),
        "other_board": release.sign(KEY, release.make_manifest(new, "0.3.0", "esp32-c3", "0.2.0")),
        "below_min": release.sign(KEY, release.make_manifest(new, "0.3.0", "unix", "0.2.5")),
        "older": release.sign(KEY, release.make_manifest(new, "0.1.0", "unix", "0.0.1")),
        "small_chunks": release.sign(KEY, release.make_manifest(new, "0.3.0", "unix", "0.2.0", chunk=1024)),
    }
    for name, signed in rel.items():
        (d / (name + ".cose")).write_bytes(signed)
    return {"old": hashlib.sha256(old).hexdigest(), "new": hashlib.sha256(new).hexdigest()}


PRELUDE = """
import os, json, hashlib, binascii, gc
import edge.hal.partition as P  # (`from edge.hal import` would ask the package's __getattr__)
from edge.hal.partition import Partition, PowerCut
from edge import ota, ota_session
from edge.ota import Updater, running_version

UPD = {"board": "unix", "keys": [%(pub)r]}

def rd(n):
    with open(n, "rb") as f:
        return f.read()

OLD = rd("old.img")
NEW = rd("new.img")

def clean():
    for n in os.listdir("."):
        if n.startswith("ota") or n.startswith("otadata"):
            os.remove(n)
    P.cut_after(None)
    P.reboot()
    # The image the board was flashed with, in the first slot.
    with open("ota_0.bin", "wb") as f:
        f.write(OLD)

def boot():
    P.reboot()
    u = Updater(UPD, running_version("0.0.0"), Partition)
    return u, u.at_boot()

BUF = bytearray(4096)

def running_hash():
    # The running slot's image, as long as the image its header names.
    n = len(NEW) if running_version("?") == "0.3.0" else len(OLD)
    part = Partition(Partition.RUNNING)
    h = hashlib.sha256()
    mv = memoryview(BUF)
    for i in range((n + 4095) // 4096):
        part.readblocks(i, BUF)
        h.update(mv[:min(4096, n - i * 4096)])
    return binascii.hexlify(h.digest()).decode()

def table(u, tamper=False):
    # The chunk table, piece by piece, as the coordinator serves it.
    T = rd("new.tbl")
    while True:
        off = u.wanted_table()
        if off is None:
            return u.state.get("phase") == "download"
        piece = T[off:off + ota.PIECE]
        if tamper:
            piece = bytes([piece[0] ^ 1]) + piece[1:]
        u.put_table(off, piece)

def download(u, tamper=None):
    if u.state.get("phase") == "download" and not table(u):
        return False
    while True:
        gc.collect()  # the test's slices of whole images, not the updater's
        i = u.wanted()
        if i is None:
            return True
        data = NEW[i * 4096:(i + 1) * 4096]
        if tamper is not None and i == tamper:
            data = data[:-1] + bytes([data[-1] ^ 1])
        if not u.put(i, data) and u.state["phase"] != "download":
            return False
"""


def run(tmp_path: Path, body: str) -> dict:
    put_releases(tmp_path)
    script = f"import sys\nsys.path.insert(0, {str(REPO)!r})\n" + PRELUDE % {"pub": PUB.hex()} + body
    # The test holds whole images in RAM beside the updater: a larger heap than a board.
    out = run_micropython(script, cwd=tmp_path, heap="4M")
    return json.loads(out.strip().splitlines()[-1])


def test_update_switches_confirms_and_stays_on_the_new_image(tmp_path: Path) -> None:
    r = run(tmp_path, """
clean()
u, m0 = boot()
out = {"m0": m0, "v0": u.version}
out["offer"] = u.offer(rd("ok.cose"))
out["progress"] = u.status().get("progress")
download(u)
out["finish"] = u.finish()
u, out["m1"] = boot()
out["v1"] = u.version
out["state1"] = P.slot_state("ota_1")
u.confirm()
u, out["m2"] = boot()  # the outcome still to be reported survives a reboot
u.reported()
u, out["m3"] = boot()
out["v2"] = u.version
out["state2"] = P.slot_state("ota_1")
out["hash"] = running_hash()
out["status"] = u.status()
out["files"] = sorted(n for n in os.listdir(".") if n.startswith("ota."))
print(json.dumps(out))
""")
    assert r["m0"] is None and r["v0"] == "0.2.0" and r["offer"] is None and r["progress"] == "0/4"
    assert "ota.tbl" not in r["files"]  # the chunk table goes once the image is whole
    assert r["finish"] is True and r["m1"] == "trial" and r["v1"] == "0.3.0" and r["state1"] == "pending_verify"
    assert r["m2"] == "report" and r["v2"] == "0.3.0" and r["state2"] == "valid"
    assert r["m3"] is None and r["status"]["installed"] == {"version": "0.3.0", "from": "0.2.0"}
    # Nothing under way: no ota.json, so the firmware never loads edge/ota.py at boot.
    assert "ota.json" not in r["files"] and "ota.last" in r["files"]
    assert r["hash"] == hashlib.sha256((tmp_path / "new.img").read_bytes()).hexdigest()


def test_every_refused_release_leaves_the_old_firmware_running(tmp_path: Path) -> None:
    r = run(tmp_path, """
out = {}
for name in ("other_key", "other_board", "below_min", "older", "small_chunks"):
    clean()
    u, _ = boot()
    out[name] = u.offer(rd(name + ".cose"))
    u, m = boot()
    out[name + "_after"] = [m, u.version, u.wanted()]
# A tampered chunk, three times over: abandoned.
clean()
u, _ = boot()
u.offer(rd("ok.cose"))
out["tampered"] = download(u, tamper=2)
out["tampered_status"] = u.status()
u, m = boot()
out["tampered_after"] = [m, u.version]
# A chunk table that does not match the manifest's hash, three times over.
clean()
u, _ = boot()
u.offer(rd("ok.cose"))
out["tampered_table"] = table(u, tamper=True)
out["tampered_table_status"] = u.status()
u, m = boot()
out["tampered_table_after"] = [m, u.version, "ota.tbl" in os.listdir(".")]
# Every chunk passed, then the slot changed on flash before the switch.
clean()
u, _ = boot()
u.offer(rd("ok.cose"))
download(u)
Partition("ota_1").writeblocks(1, b"\\x00" * 4096)
out["flash_changed"] = u.finish()
out["flash_changed_status"] = u.status()
u, m = boot()
out["flash_changed_after"] = [m, u.version]
# A manifest changed on flash after it was accepted is not trusted either:
# checked again before the switch.
clean()
u, _ = boot()
u.offer(rd("ok.cose"))
with open("ota.cose", "r+b") as f:
    f.seek(40)
    f.write(b"X")
u, m = boot()
download(u)
out["manifest_changed"] = [u.finish(), u.status()["last_failed"]["reason"]]
u, m = boot()
out["manifest_changed_after"] = [m, u.version]
print(json.dumps(out))
""")
    assert "does not trust" in r["other_key"]
    assert r["other_board"] == "image for board esp32-c3, this board is unix"
    assert "below the release's minimum 0.2.5" in r["below_min"]
    assert "not newer" in r["older"]
    assert "block size" in r["small_chunks"]
    for name in ("other_key", "other_board", "below_min", "older", "small_chunks"):
        assert r[name + "_after"] == [None, "0.2.0", None], name
    assert r["tampered"] is False
    assert r["tampered_status"]["last_failed"]["reason"] == "chunk 2 does not match its hash: failed 3 times"
    assert r["tampered_table"] is False
    assert r["tampered_table_status"]["last_failed"]["reason"] == \
        "the chunk table does not match the manifest's hash: failed 3 times"
    assert r["tampered_table_after"] == [None, "0.2.0", False]
    assert r["tampered_after"] == [None, "0.2.0"]
    assert r["flash_changed"] is False and "SHA-256" in r["flash_changed_status"]["last_failed"]["reason"]
    assert r["flash_changed_after"] == [None, "0.2.0"]
    assert r["manifest_changed"][0] is False and r["manifest_changed_after"] == [None, "0.2.0"]
    assert "kept manifest" in r["manifest_changed"][1] and (
        "signature" in r["manifest_changed"][1] or "CBOR" in r["manifest_changed"][1])


def test_an_image_that_never_confirms_is_rolled_back_with_its_reason(tmp_path: Path) -> None:
    r = run(tmp_path, """
out = {}
class Fw:
    def __init__(self):
        self.cfg = {"updates": UPD, "retry_after_s": 1}
        self.outbox = [1]  # its readings never leave: nothing acknowledged
        self.client = None
        self.running = True
        self.reboot_requested = False
        self.config_path = "config.json"
        self.ota = None
import edge.firmware
clean()
u, _ = boot()
u.offer(rd("ok.cose"))
download(u)
u.finish()
P.reboot()
fw = Fw()
s = ota_session.Session(fw, source=object(), Partition=Partition, confirm_ms=-1)
out["mode"] = s.mode
out["version"] = s.version
s.poll()  # past the deadline with no reading acknowledged
out["reboot"] = [fw.reboot_requested, fw.running]
# The old image boots, records the rollback and tells the coordinator.
class Source:
    sent = []
    def report(self, signed):
        self.sent.append(signed)
        return 68
from shared import secp256k1, cose, cbor
P.reboot()
fw = Fw()
fw.outbox = []
fw.secret = bytes(range(7, 39))
fw.public_key = secp256k1.public_key(fw.secret)
s = ota_session.Session(fw, source=Source(), Partition=Partition)
out["report_mode"] = s.mode
s.poll()
s.poll()
msg = cose.parse(Source.sent[0])
out["reports"] = len(Source.sent)
out["report"] = cbor.loads(msg.payload)
out["report_verifies"] = secp256k1.verify(fw.public_key, msg.to_be_signed(), msg.signature)
u, out["after"] = boot()
out["version_after"] = u.version
out["status"] = u.status()
out["slot"] = P.slot_state("ota_1")
# Offered again: taken once more (a power cut in the trial also rolls
# back), then refused after its second rollback.
fw2 = Fw()
s2 = ota_session.Session(fw2, source=object(), Partition=Partition)
s2.offered(b"stored x/1 t=1 fw=0.3.0")
out["reoffer"] = s2.offer
u, _ = boot()
u.offer(rd("ok.cose"))
download(u)
u.finish()
boot()
u, m = boot()
out["second"] = [m, u.status()["last_rollback"]["count"]]
s3 = ota_session.Session(Fw(), source=object(), Partition=Partition)
s3.offered(b"stored x/1 t=1 fw=0.3.0")
out["third"] = s3.offer
# The kept manifest lost from flash mid-download: abandoned, not stuck.
clean()
u, _ = boot()
u.offer(rd("ok.cose"))
os.remove("ota.cose")
P.reboot()
fw3 = Fw()
fw3.outbox = []
s4 = ota_session.Session(fw3, source=object(), Partition=Partition)
s4.poll()
out["lost_manifest"] = [s4.mode, s4.status().get("last_failed", {}).get("reason", "")]
# A crash of the new image (a reboot before any confirmation) rolls back too.
clean()
u, _ = boot()
u.offer(rd("ok.cose"))
download(u)
u.finish()
u, m = boot()
u, out["crash"] = boot()
out["crash_status"] = u.status()
out["console"] = ota_session.console_lines(Fw())
print(json.dumps(out))
""")
    assert r["mode"] == "trial" and r["version"] == "0.3.0"
    assert r["reboot"] == [True, False]
    assert r["report_mode"] == "rolled_back" and r["reports"] == 1 and r["report_verifies"]
    assert r["report"] == {"v": "0.2.0", "to": "0.3.0", "ok": False,
                           "why": "no reading acknowledged within -1 s of booting it"}
    assert r["after"] is None and r["version_after"] == "0.2.0" and r["slot"] == "aborted"
    assert r["status"]["last_rollback"]["version"] == "0.3.0"
    assert "no reading acknowledged" in r["status"]["last_rollback"]["reason"]
    assert r["reoffer"] == "0.3.0" and r["second"] == ["rolled_back", 2] and r["third"] is None
    assert r["crash"] == "rolled_back" and "restarted before it was confirmed" in r["crash_status"]["last_rollback"]["reason"]
    assert r["lost_manifest"][0] is None and "unreadable" in r["lost_manifest"][1]
    assert r["console"] == ["firmware 0.2.0 in ota_0, board unix, 1 release key(s)",
                            "telling the coordinator how the update ended",
                            "last rollback: 0.3.0 (the new image restarted before it was confirmed)"]


def test_a_confirmed_release_rotates_the_release_keys(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"updates": {"board": "unix", "keys": [PUB.hex()]}}))
    r = run(tmp_path, """
from edge import config
class Fw:
    def __init__(self):
        self.cfg = config.load("config.json")
        self.outbox = []
        self.client = None
        self.running = True
        self.reboot_requested = False
        self.config_path = "config.json"
clean()
u, _ = boot()
out = {"offer": u.offer(rd("rotate.cose"))}
download(u)
u.finish()
P.reboot()
s = ota_session.Session(Fw(), source=object(), Partition=Partition)
s.delivered()
s.delivered()
out["mode"] = s.mode
out["keys"] = config.load("config.json")["updates"]["keys"]
print(json.dumps(out))
""")
    assert r["offer"] is None and r["mode"] is None
    assert r["keys"] == [secp256k1.public_key(OTHER).hex()]


def test_power_cut_at_random_points_always_boots_a_whole_image(tmp_path: Path) -> None:
    hashes = put_releases(tmp_path)
    r = run(tmp_path, """
import random
from shared import release as R
# Same bytes, same answer: the signature is checked once per process here
# (each simulated boot would check it again on a board; this test is about
# the cuts, test_every_refused_release... about the checks).
_verified = {}
_verify = R.verify
def verify(signed, keys):
    if signed not in _verified:
        _verified[signed] = _verify(signed, keys)
    return _verified[signed]
R.verify = verify
orig_save = Updater.save
def save(self):
    # A cut before a state file is replaced leaves the old one (rename).
    if P._spend():
        raise PowerCut("cut before saving ota state")
    orig_save(self)
Updater.save = save
orig_put_table = Updater.put_table
def put_table(self, off, data):
    # A cut while a piece of the chunk table is appended: half of it lands.
    if off == self.wanted_table() and P._spend():
        with open(self.table_path, "ab") as f:
            f.write(data[:len(data) // 2])
        raise PowerCut("cut appending the chunk table")
    return orig_put_table(self, off, data)
Updater.put_table = put_table

import edge
from edge import ota_boot
edge.release = lambda name: None  # the patched modules stay loaded (a board releases them)

def power_up():
    # As the firmware starts: edge/ota_boot.py's checks first, then the
    # state machine. None: the bootloader was pointed at the new image and
    # the board reboots at once.
    P.reboot()
    boots[0] += 1
    if ota_boot._run(UPD, running_version("0.0.0")):
        return None
    u = Updater(UPD, running_version("0.0.0"), Partition)
    m = u.at_boot()
    seen[running_hash()] = 1
    return u, m

def attempt():
    # What the meter does from power-up: resume, or take the coordinator's
    # offer (kept, checked at the next boot), download, and reboot to switch.
    offered = False
    for _ in range(8):
        got = power_up()
        if got is None:
            continue
        u, m = got
        if m is None and not offered and u.state.get("last_rollback") is None and u.version == "0.2.0":
            u.offered("0.3.0", rd("ok.cose"))
            offered = True
            continue
        if m == "download":
            if not download(u):
                return "failed"
            u.ready()
            continue
        if m == "trial":
            u.confirm()
        return "done"
    return "stuck"

# One clean run counts the flash writes an update makes.
seen = {}
boots = [0]
clean()
before = P.writes
attempt()
writes = P.writes - before
ends = {}
total_cuts = 0
seen.clear()
for seed in range(%(n)d):
    random.seed(seed)
    clean()
    cuts = 0
    for k in (random.getrandbits(16) %% (writes + 2), random.getrandbits(16) %% (writes + 2)):
        P.cut_after(k)
        try:
            attempt()
            break
        except PowerCut:
            cuts += 1
    P.cut_after(None)
    total_cuts += cuts
    while True:
        try:
            attempt()
            break
        except PowerCut:
            pass
    u, m = power_up() or power_up()
    end = "%%s %%s" %% (u.version, "rolled_back" if u.state.get("last_rollback") else P.slot_state(Partition(Partition.RUNNING).info()[4]))
    if u.state.get("last_failed"):
        end += " " + u.state["last_failed"]["reason"]
    ends[end] = ends.get(end, 0) + 1
print(json.dumps({"writes": writes, "ends": ends, "cuts": total_cuts, "boots": boots[0], "hashes": sorted(seen)}))
""" % {"n": POWER_CUTS})
    assert r["writes"] >= 8
    # Every boot, after every cut, ran a whole image: the old or the new.
    assert set(r["hashes"]) <= {hashes["old"], hashes["new"]}, r
    assert r["boots"] >= POWER_CUTS * 2 and r["cuts"] > POWER_CUTS, r
    # Each run ends on a confirmed new image or, when the cut fell in its
    # trial (before readings were acknowledged), back on the old one.
    assert set(r["ends"]) <= {"0.3.0 valid", "0.2.0 rolled_back"}, r["ends"]
    assert r["ends"].get("0.3.0 valid", 0) > POWER_CUTS // 3, r["ends"]


def test_with_too_little_free_heap_an_update_step_waits_and_metering_goes_first(tmp_path: Path) -> None:
    # A step (its modules, the state, a block) must not crowd out the next
    # reading's signature: below FREE_FLOOR free after a collection the
    # Session takes no step, says why once, and tries again later.
    r = run(tmp_path, """
class Fw:
    def __init__(self):
        self.cfg = {"updates": UPD, "retry_after_s": 0}
        self.outbox = []
        self.client = None
        self.running = True
        self.reboot_requested = False
        self.config_path = "config.json"
        self.ota = None
class Source:
    asked = 0
    def manifest(self):
        Source.asked += 1
        raise OSError("coordinator away")
clean()
s = ota_session.Session(Fw(), source=Source(), Partition=Partition)
s.offered(b"stored x/1 t=1 fw=0.3.0")
out = {"offer": s.offer}
floor = ota_session.FREE_FLOOR
# As a heap that has less free than a step needs (the test's heap is large).
ota_session.FREE_FLOOR = gc.mem_free() + (1 << 24)
out["short"] = [s.poll(), Source.asked, s.offer, s.short, s.retry_at is not None]
out["again"] = [s.poll(), Source.asked]  # within its retry delay: nothing asked
ota_session.FREE_FLOOR = floor
s.retry_at = None
out["room"] = [s.poll(), Source.asked, s.offer, s.short]
print(json.dumps(out))
""")
    assert r["offer"] == "0.3.0"
    assert r["short"] == [False, 0, "0.3.0", True, True], r  # no fetch: the offer waits
    assert r["again"] == [False, 0], r
    assert r["room"] == [False, 1, None, False], r  # room again: the manifest was asked for
