"""The coordinator's wallet: an HD key kept encrypted at rest, its UTXOs,
coin selection, fees and change.

Keys: BIP-32 (`bitcoinx.BIP32PrivateKey`); the wallet derives
m/0'/0/i for receiving and change and m/0'/1/i for channel keys (one per
channel and role), recording the next unused index of each chain.

At rest (`save`/`open`), the file is JSON: the extended private key is
encrypted with AES-256-GCM (pycryptodomex, which bitcoinx itself depends on)
under a key stretched from the password with scrypt (hashlib, N=2^14, r=8,
p=1, 16-byte salt); the GCM tag authenticates it, so a wrong password or a
changed file is reported, never used. The UTXO list and indices are not
secret and sit beside it in clear; the file is replaced atomically
(write, fsync, rename).

Every transaction the wallet builds is checked by `txs.verify_transaction`
(bitcoinx's interpreter) before it is returned.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from bitcoinx import (
    BIP32PrivateKey,
    PrivateKey,
    Script,
    Tx,
    TxInput,
    TxOutput,
    bip32_key_from_string,
    hash_to_hex_str,
    hex_str_to_hash,
)
from Cryptodome.Cipher import AES

from .txs import (
    DEFAULT_DUST_LIMIT,
    DEFAULT_FEE_RATE,
    SEQUENCE_FINAL,
    Outpoint,
    estimate_size,
    fee_for_size,
    p2pkh_script_sig,
    sign_input,
    verify_transaction,
)

HARDENED = 0x80000000
RECEIVE_CHAIN = 0
CHANNEL_CHAIN = 1
_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
FILE_VERSION = 1


class WalletError(Exception):
    """Wrong password, corrupt file, insufficient funds, unknown coin..."""


class InsufficientFunds(WalletError):
    pass


# -- encryption at rest -------------------------------------------------------

def _stretch(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)


def encrypt_secret(secret: bytes, password: str) -> dict:
    salt = secrets.token_bytes(16)
    nonce = secrets.token_bytes(12)
    key = _stretch(password, salt, **_SCRYPT)
    ct, tag = AES.new(key, AES.MODE_GCM, nonce=nonce).encrypt_and_digest(secret)
    return {"kdf": "scrypt", **_SCRYPT, "salt": salt.hex(), "cipher": "aes-256-gcm", "nonce": nonce.hex(),
            "ciphertext": ct.hex(), "tag": tag.hex()}


def decrypt_secret(box: dict, password: str) -> bytes:
    if box.get("kdf") != "scrypt" or box.get("cipher") != "aes-256-gcm":
        raise WalletError(f"key encryption {box.get('kdf')}/{box.get('cipher')}: expected scrypt/aes-256-gcm")
    try:
        key = _stretch(password, bytes.fromhex(box["salt"]), int(box["n"]), int(box["r"]), int(box["p"]))
        cipher = AES.new(key, AES.MODE_GCM, nonce=bytes.fromhex(box["nonce"]))
        return bytes(cipher.decrypt_and_verify(bytes.fromhex(box["ciphertext"]), bytes.fromhex(box["tag"])))
    except (KeyError, ValueError) as e:
        raise WalletError(f"cannot decrypt the wallet key: wrong password or damaged file ({e})") from None


# -- coins --------------------------------------------------------------------

@dataclass(frozen=True)
class Utxo:
    """A coin the wallet can spend: a P2PKH output to key m/0'/0/`key_index`."""

    outpoint: Outpoint
    value: int
    key_index: int

    def to_json(self) -> dict:
        return {"txid": hash_to_hex_str(self.outpoint.txid), "vout": self.outpoint.index, "value": self.value,
                "key": self.key_index}

    @classmethod
    def from_json(cls, d: dict) -> "Utxo":
        return cls(Outpoint(hex_str_to_hash(d["txid"]), int(d["vout"])), int(d["value"]), int(d["key"]))


class Wallet:
    """HD wallet with UTXO tracking. `fee_rate` is sat/kB."""

    def __init__(self, root: BIP32PrivateKey, fee_rate: int = DEFAULT_FEE_RATE,
                 dust_limit: int = DEFAULT_DUST_LIMIT) -> None:
        if fee_rate < 0:
            raise WalletError(f"fee_rate {fee_rate} sat/kB: expected >= 0")
        self.root = root
        self.fee_rate = fee_rate
        self.dust_limit = dust_limit
        self.next_index = {RECEIVE_CHAIN: 0, CHANNEL_CHAIN: 0}
        self.utxos: dict[Outpoint, Utxo] = {}
        self.reserved: set[Outpoint] = set()
        self._account = root.child(HARDENED + 0)
        self._chains = {c: self._account.child(c) for c in (RECEIVE_CHAIN, CHANNEL_CHAIN)}
        self._keys: dict[tuple[int, int], PrivateKey] = {}
        self._scripts: dict[bytes, int] = {}
        self.path: Path | None = None
        self._box: dict | None = None

    # -- keys ---------------------------------------------------------------
    @classmethod
    def generate(cls, **kw: int) -> "Wallet":
        return cls(BIP32PrivateKey.from_random(), **kw)

    def key(self, chain: int, index: int) -> PrivateKey:
        k = self._keys.get((chain, index))
        if k is None:
            k = self._chains[chain].child(index)
            self._keys[(chain, index)] = k
            if chain == RECEIVE_CHAIN:
                self._scripts[bytes(k.public_key.P2PKH_script())] = index
        return k

    def new_index(self, chain: int) -> int:
        i = self.next_index[chain]
        self.next_index[chain] = i + 1
        self.key(chain, i)
        return i

    def receive_script(self) -> tuple[int, Script]:
        """A fresh P2PKH script to be paid to, with its key index."""
        i = self.new_index(RECEIVE_CHAIN)
        return i, self.key(RECEIVE_CHAIN, i).public_key.P2PKH_script()

    def channel_key(self, index: int) -> PrivateKey:
        return self.key(CHANNEL_CHAIN, index)

    def _known_scripts(self) -> dict[bytes, int]:
        for i in range(self.next_index[RECEIVE_CHAIN]):
            self.key(RECEIVE_CHAIN, i)
        return self._scripts

    # -- coins --------------------------------------------------------------
    def balance(self, include_reserved: bool = False) -> int:
        return sum(u.value for o, u in self.utxos.items() if include_reserved or o not in self.reserved)

    def add_utxo(self, utxo: Utxo) -> None:
        self.key(RECEIVE_CHAIN, utxo.key_index)
        self.utxos[utxo.outpoint] = utxo

    def scan(self, tx: Tx) -> list[Utxo]:
        """Record outputs of `tx` that pay this wallet; forget coins it spends."""
        for txin in tx.inputs:
            op = Outpoint(txin.prev_hash, txin.prev_idx)
            self.utxos.pop(op, None)
            self.reserved.discard(op)
        scripts = self._known_scripts()
        found = []
        txid = tx.hash()
        for n, out in enumerate(tx.outputs):
            idx = scripts.get(bytes(out.script_pubkey))
            if idx is not None:
                u = Utxo(Outpoint(txid, n), out.value, idx)
                self.utxos[u.outpoint] = u
                found.append(u)
        return found

    def select_coins(self, target: int, outputs: list[TxOutput]) -> tuple[list[Utxo], int]:
        """Coins covering `target` plus the fee for a transaction with
        `outputs` and a change output. Prefers the smallest single coin that
        covers it; else accumulates largest first. Returns (coins, fee
        without change)."""
        free = sorted((u for o, u in self.utxos.items() if o not in self.reserved), key=lambda u: u.value)
        change_out = TxOutput(0, Script(bytes(25)))

        def need(n_in: int) -> int:
            return target + fee_for_size(estimate_size(n_in, 0, outputs + [change_out]), self.fee_rate)

        for u in free:
            if u.value >= need(1):
                return [u], fee_for_size(estimate_size(1, 0, outputs), self.fee_rate)
        chosen: list[Utxo] = []
        total = 0
        for u in reversed(free):
            chosen.append(u)
            total += u.value
            if total >= need(len(chosen)):
                return chosen, fee_for_size(estimate_size(len(chosen), 0, outputs), self.fee_rate)
        # Without change the fee is a little lower: the coins may still do.
        if chosen and total >= target + fee_for_size(estimate_size(len(chosen), 0, outputs), self.fee_rate):
            return chosen, fee_for_size(estimate_size(len(chosen), 0, outputs), self.fee_rate)
        raise InsufficientFunds(f"need {need(max(1, len(chosen)))} sat (outputs {target} + fee at "
                                f"{self.fee_rate} sat/kB), have {total} unreserved")

    def build_payment(self, outputs: list[TxOutput], reserve: bool = True) -> Tx:
        """A signed, interpreter-checked transaction paying `outputs` from the
        wallet's coins, with change back to a fresh key if above dust. The
        coins are reserved until `scan(tx)` (once broadcast) or `release(tx)`."""
        for n, out in enumerate(outputs):
            if out.value < self.dust_limit:
                raise WalletError(f"output {n} of {out.value} sat: expected at least the dust limit {self.dust_limit}")
        target = sum(o.value for o in outputs)
        coins, _ = self.select_coins(target, outputs)
        total = sum(c.value for c in coins)
        outs = list(outputs)
        _, change_script = self.receive_script()
        fee_with_change = fee_for_size(estimate_size(len(coins), 0, outs + [TxOutput(0, change_script)]),
                                       self.fee_rate)
        change = total - target - fee_with_change
        if change >= self.dust_limit:
            outs.append(TxOutput(change, change_script))
        tx = Tx(1, [TxInput(c.outpoint.txid, c.outpoint.index, Script(), SEQUENCE_FINAL) for c in coins], outs, 0)
        prevouts = []
        for n, c in enumerate(coins):
            key = self.key(RECEIVE_CHAIN, c.key_index)
            prev = TxOutput(c.value, key.public_key.P2PKH_script())
            prevouts.append(prev)
            tx.inputs[n].script_sig = p2pkh_script_sig(sign_input(tx, n, key, prev), key.public_key)
        fee = verify_transaction(tx, prevouts, dust_limit=self.dust_limit)
        want = fee_for_size(tx.size(), self.fee_rate)
        if fee < want:
            raise WalletError(f"built a transaction paying {fee} sat fee for {tx.size()} bytes; expected {want}")
        if reserve:
            self.reserved.update(c.outpoint for c in coins)
        return tx

    def release(self, tx: Tx) -> None:
        """Un-reserve the coins of a transaction that will not be broadcast."""
        for txin in tx.inputs:
            self.reserved.discard(Outpoint(txin.prev_hash, txin.prev_idx))

    # -- at rest ------------------------------------------------------------
    def to_json(self) -> dict:
        return {"fee_rate": self.fee_rate, "dust_limit": self.dust_limit,
                "next_index": {str(k): v for k, v in self.next_index.items()},
                "utxos": [u.to_json() for u in self.utxos.values()],
                "reserved": [Utxo(o, 0, 0).to_json() for o in self.reserved]}

    @classmethod
    def create(cls, path: Path | str, password: str, **kw: int) -> "Wallet":
        """A new random wallet saved encrypted at `path` (which must not exist)."""
        path = Path(path)
        if path.exists():
            raise WalletError(f"{path}: exists; refusing to overwrite a wallet")
        w = cls.generate(**kw)
        w.path = path
        w._box = encrypt_secret(w.root.to_extended_key_string().encode(), password)
        w.save()
        return w

    @classmethod
    def open(cls, path: Path | str, password: str) -> "Wallet":
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise WalletError(f"{path}: cannot read wallet: {e}") from None
        if doc.get("version") != FILE_VERSION:
            raise WalletError(f"{path}: wallet version {doc.get('version')!r}: expected {FILE_VERSION}")
        xprv = decrypt_secret(doc["key"], password).decode()
        root = bip32_key_from_string(xprv)
        w = cls(root, fee_rate=int(doc["fee_rate"]), dust_limit=int(doc["dust_limit"]))
        w.path, w._box = path, doc["key"]
        for k, v in doc["next_index"].items():
            w.next_index[int(k)] = int(v)
        for d in doc["utxos"]:
            w.add_utxo(Utxo.from_json(d))
        w.reserved = {Utxo.from_json(d).outpoint for d in doc.get("reserved", [])}
        return w

    def save(self) -> None:
        if self.path is None or self._box is None:
            raise WalletError("wallet has no file; use Wallet.create(path, password)")
        doc = {"version": FILE_VERSION, "key": self._box, **self.to_json()}
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
