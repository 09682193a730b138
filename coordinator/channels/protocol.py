"""The channel node: one per coordinator. It turns signed messages into
channel steps and back, with the wallet, the store, the chain backend and
the clock plugged in; it opens no sockets (see `transport`).

As payee (server side), `handle(wire)` answers every request with a signed
reply or a signed error; handlers are `rpc_<type>` methods. As payer
(client side), `open_request`, `pay_request`, `close_request` build
requests and `on_reply(request, wire)` takes the answer and returns the
next request, if the exchange continues.

Rules the node adds to the channel state machines:
- every message is authenticated (`messages.decode`); a channel is bound to
  the coordinator key that opened it (and, for the payer, to the payee it
  asked), and a message about it from any other key is refused;
- answers must carry the digest of the request they answer;
- state is durable before it is acknowledged (payee) or sent (payer);
- an error changes nothing, on either side;
- an error answer says which rule the peer's message broke, or, when the
  failure is ours (the chain backend, the disk, a bug), only a code and a
  fixed sentence: nothing from our environment reaches a peer.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

from bitcoinx import PrivateKey, Tx

from ..clock import Clock
from .admission import Admission
from .chain import ChainBackend, ChainError, call
from .channel import ChannelError, ChannelPolicy, FundingError, PayeeChannel, PayerChannel, State, Update
from .messages import REPLIES, Message, MessageError, decode, digest, encode
from .store import ChannelStore, payee_from_record, payer_from_record
from .txs import Outpoint, TransactionError, txid_hex, tx_from_bytes
from .wallet import CHANNEL_CHAIN, Wallet

PaymentListener = Callable[[bytes, int, Update], None]
log = logging.getLogger("microgrid.channels")

# What a peer is told when the failure is ours, not its message's: a short
# fixed sentence, nothing from our environment (paths, URLs, settings,
# exception text). The rest of the error answers quote the rule the peer's
# own message broke (messages, channel terms and state).
PRIVATE_DETAIL = {
    "chain": "our chain backend refused or could not be reached; nothing changed, try again later",
    "internal": "an internal error here; nothing changed",
}


class ProtocolError(Exception):
    """A refused request or an error answer; `code` as in the error message."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass
class Entry:
    role: str  # "payer" or "payee"
    channel: PayerChannel | PayeeChannel
    peer: bytes  # the other coordinator's public key
    peer_uri: str
    key_index: int


class ChannelNode:
    def __init__(self, identity: PrivateKey, wallet: Wallet, store: ChannelStore, chain: ChainBackend, clock: Clock,
                 policy: ChannelPolicy | None = None, uri: str = "",
                 allow: Callable[[bytes], bool] | None = None, full_check: bool = True,
                 admission: Admission | None = None) -> None:
        self.identity = identity
        self.public_key = identity.public_key.to_bytes(compressed=True)
        self.wallet = wallet
        self.store = store
        self.chain = chain
        self.clock = clock
        self.policy = policy or ChannelPolicy(fee_rate=wallet.fee_rate, dust_limit=wallet.dust_limit)
        self.uri = uri
        self.allow = allow
        # Who may open channels to us and how many (channels/admission.py);
        # None admits every key (tests, tools).
        self.admission = admission
        self.full_check = full_check
        self.channels: dict[bytes, Entry] = {}
        self.payment_listeners: list[PaymentListener] = []
        # Chain answers `handle_async` fetched off the loop for the request
        # being handled: (what, key) -> the answer or the ChainError.
        self._facts: dict[tuple[str, Any], Any] = {}
        # Funding txs `on_reply_async` broadcasts off the loop once the reply
        # is taken (None: `on_reply` broadcasts them itself).
        self._deferred: list[Tx] | None = None
        self.resume()

    # -- lifecycle ------------------------------------------------------------
    def resume(self) -> None:
        """Load every channel from the store (after a restart)."""
        self.channels.clear()
        for row in self.store.rows():
            key = self.wallet.channel_key(row["key_index"])
            if self.wallet.next_index[CHANNEL_CHAIN] <= row["key_index"]:
                self.wallet.next_index[CHANNEL_CHAIN] = row["key_index"] + 1
            ch: PayerChannel | PayeeChannel
            if row["role"] == "payer":
                ch = payer_from_record(row["record"], key)
            else:
                ch = payee_from_record(row["record"], key)
            self.channels[row["id"]] = Entry(row["role"], ch, row["peer"], row["peer_uri"], row["key_index"])

    def now(self) -> int:
        return int(self.clock.now())

    def open_channels(self, role: str | None = None) -> list[bytes]:
        return [cid for cid, e in self.channels.items()
                if e.channel.state == State.OPEN and (role is None or e.role == role)]

    def rows(self) -> list[dict[str, object]]:
        """One row per channel, for the console, the local API and MQTT."""
        out: list[dict[str, object]] = []
        for cid, e in self.channels.items():
            out.append({"channel": cid.hex()[:16], "role": e.role, "peer": e.peer.hex()[:16],
                        "state": e.channel.state.value, "capacity_sat": e.channel.terms.capacity,
                        "paid_sat": signed_amount(e.channel)})
        return out

    def signed_by_peer(self, role: str) -> dict[str, int]:
        """Per peer (public key hex), every satoshi signed over all our
        channels in `role` with it, whatever their state: as payer what we
        have signed away, as payee what we hold signed. Durable, so the
        books built on it survive a restart."""
        out: dict[str, int] = {}
        for e in self.channels.values():
            if e.role != role or not e.peer:
                continue
            out[e.peer.hex()] = out.get(e.peer.hex(), 0) + signed_amount(e.channel)
        return out

    def open_channel_to(self, peer: bytes) -> bytes | None:
        """Our open channel paying `peer` with the most left to pay, if any."""
        best: tuple[int, bytes] | None = None
        for cid in self.open_channels("payer"):
            e = self.channels[cid]
            if e.peer == peer:
                left = e.channel.remaining  # type: ignore[union-attr]
                if best is None or left > best[0]:
                    best = (left, cid)
        return None if best is None else best[1]

    def payer(self, channel_id: bytes) -> PayerChannel:
        return self._get(channel_id, "payer").channel  # type: ignore[return-value]

    def payee(self, channel_id: bytes) -> PayeeChannel:
        return self._get(channel_id, "payee").channel  # type: ignore[return-value]

    def _get(self, channel_id: bytes, role: str) -> Entry:
        e = self.channels.get(channel_id)
        if e is None:
            raise ProtocolError("unknown-channel", f"channel {channel_id.hex()} is not known here")
        if e.role != role:
            raise ProtocolError("role", f"channel {channel_id.hex()}: we are its {e.role}, not its {role}")
        return e

    def _save(self, e: Entry, update: Update | None = None, acked: bool = False) -> None:
        self.store.save_channel(e.role, e.channel, e.peer, e.peer_uri, e.key_index, update, acked)

    def _save_wallet(self) -> None:
        if self.wallet.path is not None:
            self.wallet.save()

    # -- server side (requests) -------------------------------------------------
    def handle(self, wire: bytes) -> bytes:
        """Answer one request; always returns signed reply bytes."""
        try:
            msg = decode(wire)
        except MessageError as e:
            return self._error(bytes(16), wire, e.code, str(e))
        if msg.reply_to or msg.type not in REPLIES:
            return self._error(msg.channel_id, wire, "unexpected", f"{msg.type} is not a request")
        handler = getattr(self, "rpc_" + msg.type.replace("-", "_"))
        try:
            body = handler(msg)
        except ProtocolError as e:
            return self._error(msg.channel_id, wire, e.code, e.detail)
        except ChannelError as e:
            return self._error(msg.channel_id, wire, e.code, str(e))
        except TransactionError as e:  # the peer's transaction bytes
            return self._error(msg.channel_id, wire, "transaction", str(e))
        except ChainError as e:
            # Our backend's words may name our node, its URL or our
            # network: the peer gets the code, our log the detail.
            log.warning("%s from %s: the chain backend failed: %s", msg.type, msg.sender.hex()[:16], e)
            return self._error(msg.channel_id, wire, "chain", PRIVATE_DETAIL["chain"])
        except Exception as e:  # a bug or a storage failure: refuse, never acknowledge
            log.exception("%s from %s failed here", msg.type, msg.sender.hex()[:16])
            return self._error(msg.channel_id, wire, "internal", PRIVATE_DETAIL["internal"])
        return encode(self.identity, REPLIES[msg.type], msg.channel_id, body, digest(wire)).wire

    async def handle_async(self, wire: bytes) -> bytes:
        """`handle` for the CoAP server. The chain calls a request needs (a
        `funded` funding output, a `closed` closing tx, a `close` and its
        broadcast, a refused channel's funding) are made first in the chain
        thread (`chain.call`): a slow node or ARC holds up that request, not
        the loop and every other peer's updates. The rest runs on the loop's
        thread as `handle` does (channel state and its store stay on one
        thread). Only for a signed request from the channel's own peer: a
        stranger cannot make us query the chain."""
        facts: dict[tuple[str, Any], Any] = {}
        try:
            msg = decode(wire)
            e = self.channels.get(msg.channel_id)
            if e is not None and msg.sender == e.peer:
                if msg.type == "funded" and e.role == "payee" and e.channel.funding is not None:
                    facts[("output", e.channel.funding)] = await self._ask(self.chain.get_output, e.channel.funding)
                elif msg.type == "closed" and e.role == "payer":
                    txid = txid_hex(tx_from_bytes(msg.body["closing_tx"]))
                    facts[("confirmations", txid)] = await self._ask(self.chain.confirmations, txid)
                elif msg.type == "close" and isinstance(e.channel, PayeeChannel):
                    await self._close_ahead(msg.channel_id, e.channel, facts)
                elif msg.type == "pay" and isinstance(e.channel, PayeeChannel) and e.channel.funding_lost:
                    # Updates are refused while the funding is not on the chain;
                    # the payer puts it back when refused, so look again now
                    # rather than at the lifecycle's next tick.
                    assert e.channel.funding is not None
                    shown = await self._ask(self.chain.confirmations, txid_hex_of(e.channel.funding))
                    if not isinstance(shown, ChainError):
                        # Confirmed or not is the lifecycle's to judge (its setting).
                        self.watch_funding(msg.channel_id, sys.maxsize, shown)
        except (MessageError, TransactionError, KeyError, TypeError, ValueError):
            pass  # `handle` meets the same fault and answers it
        self._facts = facts
        try:
            return self.handle(wire)
        finally:
            self._facts = {}

    async def _close_ahead(self, channel_id: bytes, ch: PayeeChannel, facts: dict[tuple[str, Any], Any]) -> None:
        """The payer asks us to close: close (its broadcast in the chain
        thread) before `rpc_close` answers with the closing tx, or look
        whether the chain still has a close made before."""
        if ch.state == State.CLOSING or (ch.state == State.OPEN and ch.latest is not None):
            try:
                await self.close_async(channel_id)
            except ChainError as err:
                facts[("close", channel_id)] = err
                return
            except ChannelError:
                return  # `handle` meets it again and answers it
            assert ch.closing_tx is not None
            facts[("confirmations", txid_hex(ch.closing_tx))] = 0  # just broadcast
        elif ch.state == State.CLOSED and ch.closing_tx is not None:
            txid = txid_hex(ch.closing_tx)
            facts[("confirmations", txid)] = await self._ask(self.chain.confirmations, txid)

    async def _ask(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await call(self.chain, fn, *args)
        except ChainError as err:
            return err

    def _fact(self, what: str, key: Any, fn: Callable[..., Any]) -> Any:
        """The chain's answer fetched by `handle_async`, else asked now."""
        if (what, key) not in self._facts:
            return fn(key)
        answer = self._facts[(what, key)]
        if isinstance(answer, ChainError):
            raise answer
        return answer

    def _error(self, channel_id: bytes, wire: bytes, code: str, detail: str) -> bytes:
        return encode(self.identity, "error", channel_id, {"code": code, "detail": detail[:400]}, digest(wire)).wire

    def _from_peer(self, msg: Message, role: str) -> Entry:
        e = self._get(msg.channel_id, role)
        if msg.sender != e.peer:
            raise ProtocolError("forbidden", f"channel {msg.channel_id.hex()} belongs to {e.peer.hex()}, "
                                f"not to sender {msg.sender.hex()}")
        return e

    def rpc_open(self, msg: Message) -> dict:
        if self.allow is not None and not self.allow(msg.sender):
            raise ProtocolError("forbidden", f"coordinator {msg.sender.hex()} is not an allowed peer")
        if self.admission is not None:
            # Before anything is stored or a wallet key derived: a refused
            # open costs a pass over the channels in memory and a signature.
            self._forget_stalled_opens(msg.sender, self.admission.max_pending_per_peer - 1)
            incoming = [(e.peer, e.channel) for e in self.channels.values()
                        if e.role == "payee" and isinstance(e.channel, PayeeChannel)]
            refusal = self.admission.check(msg.sender, msg.body["capacity"], incoming)
            if refusal is not None:
                raise ProtocolError(refusal.code, refusal.detail)
        if msg.channel_id in self.channels:
            raise ProtocolError("duplicate", f"channel {msg.channel_id.hex()} already exists")
        b = msg.body
        index = self.wallet.next_index[CHANNEL_CHAIN]
        _, script = self.wallet.receive_script()
        ch = PayeeChannel.accept(msg.channel_id, b["capacity"], b["fee"], b["refund_locktime"], b["payer_key"],
                                 b["payer_script"], self.wallet.channel_key(index), bytes(script), self.now(),
                                 self.policy)
        self.wallet.new_index(CHANNEL_CHAIN)
        e = Entry("payee", ch, msg.sender, str(b.get("uri", "")), index)
        self._save(e)
        self._save_wallet()
        self.channels[msg.channel_id] = e
        return {"payee_key": ch.terms.payee_key, "payee_script": ch.terms.payee_script}

    def _forget_stalled_opens(self, peer: bytes, keep: int) -> None:
        """An allowed peer opening again while its earlier opens never got
        funded (it crashed, a message was lost) replaces them: keep its
        `keep` newest unfunded channels, forget the rest. Safe for us: no
        funds of ours are in them, and a funding the payer still sends for
        one is answered `unknown-channel` (its refund returns the coins)."""
        stalled = [cid for cid, e in self.channels.items()
                   if e.role == "payee" and e.peer == peer and e.channel.state in (State.ACCEPTED,
                                                                                    State.REFUND_SIGNED)]
        for cid in stalled[:max(0, len(stalled) - keep)]:
            self.store.delete_channel(cid)
            del self.channels[cid]

    def rpc_refund_request(self, msg: Message) -> dict:
        e = self._from_peer(msg, "payee")
        ch: PayeeChannel = e.channel  # type: ignore[assignment]
        b = msg.body
        if len(b["funding_txid"]) != 32:
            raise ProtocolError("malformed", f"funding txid of {len(b['funding_txid'])} bytes: expected 32")
        sig = ch.sign_refund(Outpoint(b["funding_txid"], b["funding_vout"]), tx_from_bytes(b["refund"]))
        try:
            self._save(e)
        except BaseException:
            ch.state, ch.funding = State.ACCEPTED, None
            raise
        return {"sig": sig}

    def rpc_funded(self, msg: Message) -> dict:
        e = self._from_peer(msg, "payee")
        ch: PayeeChannel = e.channel  # type: ignore[assignment]
        ch.require_state(State.REFUND_SIGNED)
        tx = tx_from_bytes(msg.body["funding_tx"])
        assert ch.funding is not None
        if txid_hex(tx) != txid_hex_of(ch.funding):
            raise FundingError(f"funding tx {txid_hex(tx)}: expected {txid_hex_of(ch.funding)} (the refund's input)")
        if self._fact("output", ch.funding, self.chain.get_output) is None:
            raise FundingError(f"funding output {ch.funding} is not unspent on the chain")
        ch.on_funded(tx)
        try:
            self._save(e)
        except BaseException:
            ch.state = State.REFUND_SIGNED
            raise
        return {}

    def rpc_pay(self, msg: Message) -> dict:
        e = self._from_peer(msg, "payee")
        ch: PayeeChannel = e.channel  # type: ignore[assignment]
        b = msg.body
        update = Update(b["seq"], b["amount"], b["sig"])
        now = self.now()
        delta = ch.check_update(update, now)
        if self.full_check:
            ch.complete_update(update)
        previous = ch.latest
        ch.latest = update
        try:
            self._save(e, update, acked=True)  # durable before the ack below
        except BaseException:
            ch.latest = previous
            raise
        for listener in self.payment_listeners:
            listener(msg.channel_id, delta, update)
        return {"seq": update.seq, "amount": update.amount}

    def rpc_close(self, msg: Message) -> dict:
        e = self._from_peer(msg, "payee")
        failed = self._facts.get(("close", msg.channel_id))
        if failed is not None:
            raise failed  # handle_async's broadcast failed: not again on the loop
        return {"closing_tx": self._close(e).to_bytes()}

    def rpc_closed(self, msg: Message) -> dict:
        """The payee says it closed. Believed only when the chain shows the
        closing tx: a signed close that was never broadcast (an old state
        kept back, a crash before the broadcast) would otherwise mark the
        channel closed and stop our refund while the funding output is
        still unspent. The amount booked is what that tx pays."""
        e = self._from_peer(msg, "payer")
        ch: PayerChannel = e.channel  # type: ignore[assignment]
        tx = tx_from_bytes(msg.body["closing_tx"])
        txid = txid_hex(tx)
        if ch.state == State.CLOSED and ch.closing_txid == txid:
            return {}  # the payee repeats a notice we already took
        ch.require_state(State.OPEN)
        if self._fact("confirmations", txid, self.chain.confirmations) < 0:
            raise ProtocolError("not-on-chain", f"closing tx {txid} is not on the chain")
        ch.on_close(tx)
        self._save(e)
        self.wallet.scan(tx)
        self._save_wallet()
        return {}

    def _close(self, e: Entry) -> Tx:
        """Close as payee, or finish a close begun before: a CLOSING channel
        broadcasts the closing tx it stored (the same tx, whatever the time
        now: it was built before the lock time), a CLOSED one is put back
        on the chain if the chain lost it. A broadcast of a tx the chain
        already has succeeds (see the backends)."""
        ch: PayeeChannel = e.channel  # type: ignore[assignment]
        if ch.state == State.CLOSED and ch.closing_tx is not None:
            if self._fact("confirmations", txid_hex(ch.closing_tx), self.chain.confirmations) < 0:
                self.chain.broadcast(ch.closing_tx)
            return ch.closing_tx
        if ch.state == State.CLOSING and ch.closing_tx is not None:
            tx = ch.closing_tx
        else:
            tx = ch.close(self.now())
            self._save(e)  # CLOSING with the closing tx, before it is broadcast
        self.chain.broadcast(tx)
        self._closed(e, tx)
        return tx

    def _closed(self, e: Entry, tx: Tx) -> None:
        """The closing tx `tx` of a CLOSING channel is on the chain."""
        e.channel.on_closed()  # type: ignore[union-attr]
        self._save(e)
        self.wallet.scan(tx)
        self._save_wallet()

    # -- payee actions -------------------------------------------------------------
    def close(self, channel_id: bytes) -> Message:
        """Close a channel we are paid through: broadcast the latest update
        and return the `closed` notice to send to the payer."""
        e = self._get(channel_id, "payee")
        tx = self._close(e)
        return encode(self.identity, "closed", channel_id, {"closing_tx": tx.to_bytes()})

    async def close_async(self, channel_id: bytes) -> Message:
        """`close`, its broadcast in the chain thread (the lifecycle's way;
        see `chain.call`). As in `close`, the closing tx is stored (CLOSING)
        before it is broadcast; a close a peer's request finished meanwhile
        is not finished twice. A CLOSED channel only gets its notice again:
        whether the chain still has the close is the lifecycle's to check."""
        e = self._get(channel_id, "payee")
        ch: PayeeChannel = e.channel  # type: ignore[assignment]
        if ch.state != State.CLOSED:
            if ch.state == State.CLOSING and ch.closing_tx is not None:
                tx = ch.closing_tx
            else:
                tx = ch.close(self.now())
                self._save(e)  # CLOSING with the closing tx, before it is broadcast
            await call(self.chain, self.chain.broadcast, tx)
            if ch.state == State.CLOSING:
                self._closed(e, tx)
        assert ch.closing_tx is not None
        return encode(self.identity, "closed", channel_id, {"closing_tx": ch.closing_tx.to_bytes()})

    def channels_to_close(self) -> list[bytes]:
        now = self.now()
        return [cid for cid, e in self.channels.items()
                if e.role == "payee" and isinstance(e.channel, PayeeChannel) and e.channel.must_close(now)
                and e.channel.latest is not None]

    # -- client side (payer) -------------------------------------------------------
    def open_request(self, peer_uri: str, capacity: int, lock_seconds: int, peer: bytes = b"") -> Message:
        """Start a channel paying the coordinator at `peer_uri` (whose key
        is `peer`, if known; else the first answer binds it)."""
        index = self.wallet.next_index[CHANNEL_CHAIN]
        _, script = self.wallet.receive_script()
        cid = os.urandom(16)
        ch = PayerChannel.propose(cid, capacity, self.wallet.channel_key(index), bytes(script), self.now(),
                                  lock_seconds, self.policy)
        self.wallet.new_index(CHANNEL_CHAIN)
        e = Entry("payer", ch, peer, peer_uri, index)
        self._save(e)
        self._save_wallet()
        self.channels[cid] = e
        t = ch.terms
        return encode(self.identity, "open", cid, {"capacity": t.capacity, "fee": t.fee,
                                                   "refund_locktime": t.refund_locktime, "payer_key": t.payer_key,
                                                   "payer_script": t.payer_script, "uri": self.uri})

    def pay_request(self, channel_id: bytes, amount: int) -> Message:
        """Sign an update adding `amount` sat; stored before it is returned."""
        e = self._get(channel_id, "payer")
        ch: PayerChannel = e.channel  # type: ignore[assignment]
        if ch.sent is not None and ch.sent.seq > ch.acked_seq:
            raise ProtocolError("pending", f"update {ch.sent.seq} is not acknowledged yet; resend it first")
        previous = ch.sent
        update = ch.pay(amount, self.now())
        try:
            self._save(e, update)
        except BaseException:
            ch.sent = previous
            raise
        return self._pay_message(channel_id, update)

    def pending_request(self, channel_id: bytes) -> Message | None:
        """The unacknowledged update to resend (after a timeout or restart)."""
        ch = self.payer(channel_id)
        if ch.sent is None or ch.sent.seq <= ch.acked_seq:
            return None
        return self._pay_message(channel_id, ch.sent)

    def _pay_message(self, channel_id: bytes, u: Update) -> Message:
        return encode(self.identity, "pay", channel_id, {"seq": u.seq, "amount": u.amount, "sig": u.payer_sig})

    def abandon(self, channel_id: bytes) -> bool:
        """As payer, forget an open that stopped before the funding tx
        existed outside this wallet (proposed, accepted, refund asked):
        its coins are unreserved and its row deleted. Returns whether it
        was abandoned; a channel further on is left to the lifecycle."""
        e = self._get(channel_id, "payer")
        ch: PayerChannel = e.channel  # type: ignore[assignment]
        if ch.state not in (State.PROPOSED, State.ACCEPTED, State.FUNDING):
            return False
        if ch.funding_tx is not None:
            self.wallet.release(ch.funding_tx)
            self._save_wallet()
        self.store.delete_channel(channel_id)
        del self.channels[channel_id]
        return True

    async def funded_request_async(self, channel_id: bytes) -> Message | None:
        """`funded_request`, its chain calls in the chain thread (the
        lifecycle's way)."""
        e = self._get(channel_id, "payer")
        ch: PayerChannel = e.channel  # type: ignore[assignment]
        if ch.state != State.REFUND_SIGNED or ch.funding_tx is None:
            return None
        tx = ch.funding_tx
        if await call(self.chain, self.chain.confirmations, txid_hex(tx)) < 0:
            await call(self.chain, self.chain.broadcast, tx)
            self.wallet.scan(tx)
            self._save_wallet()
        return encode(self.identity, "funded", channel_id, {"funding_tx": tx.to_bytes()})

    def funded_request(self, channel_id: bytes) -> Message | None:
        """As payer, finish an open the payee has not acknowledged as funded
        (the broadcast failed, or the `funded` message or its answer was
        lost): broadcast the funding tx unless the chain has it, and return
        the `funded` message to send again. None if there is nothing to
        finish."""
        e = self._get(channel_id, "payer")
        ch: PayerChannel = e.channel  # type: ignore[assignment]
        if ch.state != State.REFUND_SIGNED or ch.funding_tx is None:
            return None
        if self.chain.confirmations(txid_hex(ch.funding_tx)) < 0:
            self.chain.broadcast(ch.funding_tx)
            self.wallet.scan(ch.funding_tx)
            self._save_wallet()
        return encode(self.identity, "funded", channel_id, {"funding_tx": ch.funding_tx.to_bytes()})

    def watch_funding(self, channel_id: bytes, confirmations: int, shown: int | None = None) -> int:
        """As payee, look at the funding tx on the chain: mark it confirmed
        at `confirmations`, lost while the chain does not show it (updates
        are refused then), found again if it comes back. Returns what the
        chain shows (-1 unknown, else confirmations); `shown` is that
        figure when the caller asked the chain already (off the loop)."""
        e = self._get(channel_id, "payee")
        ch: PayeeChannel = e.channel  # type: ignore[assignment]
        assert ch.funding is not None
        n = self.chain.confirmations(txid_hex_of(ch.funding)) if shown is None else shown
        confirmed, lost = n >= confirmations, n < 0
        if (confirmed, lost) != (ch.funding_confirmed, ch.funding_lost):
            ch.funding_confirmed, ch.funding_lost = confirmed, lost
            self._save(e)
        return n

    def close_request(self, channel_id: bytes) -> Message:
        self._get(channel_id, "payer")
        return encode(self.identity, "close", channel_id, {})

    def refund(self, channel_id: bytes) -> str:
        """Broadcast the refund (after its lock time)."""
        e = self._get(channel_id, "payer")
        ch: PayerChannel = e.channel  # type: ignore[assignment]
        tx = ch.refund_for_broadcast(self.now())
        txid = self.chain.broadcast(tx)
        ch.on_refunded()
        self._save(e)
        self.wallet.scan(tx)
        self._save_wallet()
        return txid

    async def refund_async(self, channel_id: bytes) -> str:
        """`refund`, its broadcast in the chain thread (the lifecycle's way)."""
        e = self._get(channel_id, "payer")
        ch: PayerChannel = e.channel  # type: ignore[assignment]
        tx = ch.refund_for_broadcast(self.now())
        txid = await call(self.chain, self.chain.broadcast, tx)
        if ch.state in (State.REFUND_SIGNED, State.OPEN):  # unless a close was taken meanwhile
            ch.on_refunded()
            self._save(e)
            self.wallet.scan(tx)
            self._save_wallet()
        return txid

    async def on_reply_async(self, request: Message, wire: bytes) -> Message | None:
        """`on_reply` for the CoAP client: the funding broadcast at an open
        (after the signed refund is stored, as in `on_refund_signature`)
        runs in the chain thread."""
        self._deferred = []
        try:
            nxt = self.on_reply(request, wire)
        finally:
            deferred, self._deferred = self._deferred, None
        for tx in deferred:
            await call(self.chain, self.chain.broadcast, tx)
            self.wallet.scan(tx)
            self._save_wallet()
        return nxt

    def on_reply(self, request: Message, wire: bytes) -> Message | None:
        """Take the answer to `request`; return the next request or None.
        Raises ProtocolError for an error answer or a reply that does not
        fit (nothing changes then)."""
        try:
            reply = decode(wire)
        except MessageError as err:
            raise ProtocolError(err.code, f"reply: {err}") from None
        if reply.reply_to != request.digest:
            raise ProtocolError("unexpected", f"reply {reply.type} answers another request")
        if reply.channel_id != request.channel_id and reply.type != "error":
            raise ProtocolError("unexpected", f"reply about channel {reply.channel_id.hex()}: "
                                f"expected {request.channel_id.hex()}")
        e = self.channels.get(request.channel_id)
        if e is not None and e.peer and reply.sender != e.peer:
            raise ProtocolError("forbidden", f"reply from {reply.sender.hex()}: expected {e.peer.hex()}")
        if reply.type == "error":
            code, detail = reply.body["code"], reply.body["detail"]
            if request.type == "pay" and code == "duplicate" and e is not None:
                # The payee already holds exactly this update: it is acknowledged.
                self._ack(e, request.body["seq"], request.body["amount"])
                return None
            raise ProtocolError(code, f"peer refused {request.type}: {detail}")
        if reply.type != REPLIES[request.type]:
            raise ProtocolError("unexpected", f"reply {reply.type} to {request.type}: expected {REPLIES[request.type]}")
        if e is None:
            raise ProtocolError("unknown-channel", f"channel {request.channel_id.hex()} is not known here")
        return getattr(self, "on_" + reply.type.replace("-", "_"))(e, reply)

    def _ack(self, e: Entry, seq: int, amount: int) -> None:
        ch: PayerChannel = e.channel  # type: ignore[assignment]
        if ch.acked_seq == seq and ch.acked_amount == amount:
            return
        ch.on_ack(seq, amount)
        self.store.mark_acked(ch, e.peer, e.peer_uri, e.key_index)

    def on_accept(self, e: Entry, reply: Message) -> Message:
        ch: PayerChannel = e.channel  # type: ignore[assignment]
        ch.on_accept(reply.body["payee_key"], reply.body["payee_script"])
        if not e.peer:
            e.peer = reply.sender
        try:
            funding_tx = self.wallet.build_payment([ch.funding_output()])
        except Exception:
            ch.state = State.PROPOSED
            raise
        refund = ch.refund_request(funding_tx)
        self._save(e)
        self._save_wallet()
        assert ch.funding is not None
        return encode(self.identity, "refund-request", ch.terms.channel_id,
                      {"funding_txid": ch.funding.txid, "funding_vout": ch.funding.index, "refund": refund.to_bytes()})

    def on_refund_signature(self, e: Entry, reply: Message) -> Message:
        ch: PayerChannel = e.channel  # type: ignore[assignment]
        ch.on_refund_signature(reply.body["sig"])
        self._save(e)  # the signed refund is durable before the funds are committed
        assert ch.funding_tx is not None
        if self._deferred is not None:
            self._deferred.append(ch.funding_tx)  # on_reply_async broadcasts it, off the loop
        else:
            self.chain.broadcast(ch.funding_tx)
            self.wallet.scan(ch.funding_tx)
            self._save_wallet()
        return encode(self.identity, "funded", ch.terms.channel_id, {"funding_tx": ch.funding_tx.to_bytes()})

    def on_funded_ack(self, e: Entry, reply: Message) -> None:
        e.channel.on_funded()  # type: ignore[call-arg]
        self._save(e)
        return None

    def on_pay_ack(self, e: Entry, reply: Message) -> None:
        self._ack(e, reply.body["seq"], reply.body["amount"])
        return None

    def on_closed(self, e: Entry, reply: Message) -> None:
        self.rpc_closed(reply)
        return None

    def on_closed_ack(self, e: Entry, reply: Message) -> None:
        ch = e.channel
        if isinstance(ch, PayeeChannel) and not ch.payer_notified:
            ch.payer_notified = True
            self._save(e)
        return None


def signed_amount(ch: PayerChannel | PayeeChannel) -> int:
    """The cumulative amount signed on a channel: as payer what we have
    signed away, as payee the latest update we hold. Once the chain has
    settled a payer's channel, what it shows counts: a close at an older
    state paid the payee less, a refund paid it nothing, and the books
    built on this then show the rest still owed."""
    if isinstance(ch, PayerChannel):
        if ch.state == State.CLOSED and ch.closed_amount is not None:
            return ch.closed_amount
        if ch.state == State.REFUNDED:
            return 0
        return ch.paid
    return ch.latest.amount if ch.latest else 0


def txid_hex_of(o: Outpoint) -> str:
    from bitcoinx import hash_to_hex_str

    return str(hash_to_hex_str(o.txid))
