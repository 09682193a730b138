"""One-way (Spilman) payment channels on BSV: the payer and payee state
machines, without I/O. Time comes in as arguments; nothing is broadcast or
stored here: the caller does that with what the methods return.

    payer                                   payee
    PayerChannel.propose()  -- open -->     PayeeChannel.accept()
            on_accept()     <-- accept --
    funding_output(); wallet builds + signs the funding tx (not broadcast)
            refund_request() -- funding outpoint + unsigned refund -->
                                           sign_refund()
      on_refund_signature() <-- payee's refund signature --
    broadcast funding; on_funded()  -- funded (funding tx) -->  on_funded()
            pay()           -- update (seq, amount, payer sig) -->  receive()
            on_ack()        <-- ack --
                               ...
                                           closing_tx() (payee signs, broadcasts
                                           the latest update before the lock time)
    or, after the lock time, refund() (the payer broadcasts the refund)

The funding output is a bare 2-of-2 CHECKMULTISIG (payer key first). The
refund spends it to the payer with nLockTime = `refund_locktime` and a
non-final input sequence. Each update spends it with the payee's
cumulative amount and the payer's change (dropped to the fee if below the
dust limit); every update and the close carry the same fixed `fee`, agreed
at open from the fee rate.

Every rule failure raises a ChannelError subclass whose `code` names the
rule (for protocol errors) and whose message names the value and what was
expected. A method that raises leaves the channel unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from bitcoinx import PrivateKey, PublicKey, Script, Tx, TxInput, TxOutput

from .txs import (
    DEFAULT_DUST_LIMIT,
    DEFAULT_FEE_RATE,
    LOCKTIME_THRESHOLD,
    SEQUENCE_FINAL,
    SEQUENCE_LOCKED,
    Outpoint,
    TransactionError,
    estimate_size,
    fee_for_size,
    multisig_script,
    multisig_script_sig,
    sign_input,
    signature_valid,
    txid_hex,
    verify_transaction,
)


class ChannelError(Exception):
    code = "channel"


class StateError(ChannelError):
    """A step that does not follow from the channel's state (out of order)."""
    code = "state"


class DuplicateUpdate(ChannelError):
    code = "duplicate"


class StaleUpdate(ChannelError):
    code = "stale"


class SequenceGap(ChannelError):
    code = "out-of-order"


class AmountError(ChannelError):
    code = "amount"


class DustError(ChannelError):
    code = "dust"


class FeeError(ChannelError):
    code = "fee"


class LockTimeError(ChannelError):
    code = "locktime"


class SignatureError(ChannelError):
    code = "signature"


class FundingError(ChannelError):
    code = "funding"


class TermsError(ChannelError):
    code = "terms"


class State(str, Enum):
    PROPOSED = "proposed"        # payer: open sent
    ACCEPTED = "accepted"        # both: keys known
    FUNDING = "funding"          # payer: funding built, refund requested
    REFUND_SIGNED = "refund-signed"  # both: payer holds a valid refund; funding may be broadcast
    OPEN = "open"                # both: funding broadcast; payments flow
    CLOSING = "closing"          # payee: closing tx built and handed to the chain
    CLOSED = "closed"            # closing tx accepted
    REFUNDED = "refunded"        # payer: refund accepted


@dataclass(frozen=True)
class ChannelPolicy:
    """Limits each side applies. `fee_rate` in sat/kB; times in seconds."""

    dust_limit: int = DEFAULT_DUST_LIMIT
    fee_rate: int = DEFAULT_FEE_RATE
    min_capacity: int = 1_000
    max_capacity: int = 100_000_000
    min_lock_seconds: int = 3_600
    max_lock_seconds: int = 30 * 86_400
    # The payee stops accepting updates and closes this long before the
    # refund becomes valid, so the close is mined first.
    close_margin: int = 600


def update_fee(fee_rate: int) -> int:
    """Fee for a channel transaction: one 2-of-2 input, two P2PKH outputs."""
    outs = [TxOutput(0, Script(bytes(25))), TxOutput(0, Script(bytes(25)))]
    return fee_for_size(estimate_size(0, 1, outs), fee_rate)


@dataclass(frozen=True)
class Terms:
    """What both sides agreed at open. Keys are 33-byte compressed."""

    channel_id: bytes
    capacity: int
    fee: int
    refund_locktime: int
    payer_key: bytes
    payer_script: bytes
    payee_key: bytes = b""
    payee_script: bytes = b""

    @property
    def funding_script(self) -> Script:
        return multisig_script(PublicKey.from_bytes(self.payer_key), PublicKey.from_bytes(self.payee_key))

    @property
    def max_payment(self) -> int:
        return self.capacity - self.fee


@dataclass(frozen=True)
class Update:
    """A payment update: the payee's cumulative `amount` after `seq` updates,
    with the payer's signature on the update transaction."""

    seq: int
    amount: int
    payer_sig: bytes


def update_tx(terms: Terms, funding: Outpoint, amount: int, dust_limit: int) -> Tx:
    """The update (and closing) transaction for `amount` to the payee."""
    outs = [TxOutput(amount, Script(terms.payee_script))]
    change = terms.capacity - terms.fee - amount
    if change >= dust_limit:
        outs.append(TxOutput(change, Script(terms.payer_script)))
    return Tx(1, [TxInput(funding.txid, funding.index, Script(), SEQUENCE_FINAL)], outs, 0)


def refund_tx(terms: Terms, funding: Outpoint) -> Tx:
    return Tx(1, [TxInput(funding.txid, funding.index, Script(), SEQUENCE_LOCKED)],
              [TxOutput(terms.capacity - terms.fee, Script(terms.payer_script))], terms.refund_locktime)


def _pubkey(raw: bytes, what: str) -> PublicKey:
    try:
        if len(raw) != 33:
            raise ValueError(f"{len(raw)} bytes")
        return PublicKey.from_bytes(raw)
    except Exception as e:  # bitcoinx raises ValueError and its own errors
        raise TermsError(f"{what} {raw.hex()[:80]!r}: expected a 33-byte compressed secp256k1 key ({e})") from None


def _script(raw: bytes, what: str) -> None:
    if not 1 <= len(raw) <= 200:
        raise TermsError(f"{what} of {len(raw)} bytes: expected 1..200")


def check_amount(terms: Terms, amount: int, dust_limit: int) -> None:
    """The payee's cumulative amount must be above dust and within capacity."""
    if amount > terms.max_payment:
        raise AmountError(f"amount {amount} sat: exceeds the channel's capacity {terms.capacity} less fee "
                          f"{terms.fee} = {terms.max_payment}")
    if amount < dust_limit:
        raise DustError(f"amount {amount} sat: expected at least the dust limit {dust_limit}")


def _check_funding_tx(terms: Terms, funding_tx: Tx, funding: Outpoint | None) -> Outpoint:
    want = bytes(terms.funding_script)
    for n, out in enumerate(funding_tx.outputs):
        if bytes(out.script_pubkey) == want:
            if out.value != terms.capacity:
                raise FundingError(f"funding output {n} holds {out.value} sat: expected the capacity {terms.capacity}")
            op = Outpoint(funding_tx.hash(), n)
            if funding is not None and op != funding:
                raise FundingError(f"funding transaction output {op}: expected {funding} (the refund's input)")
            return op
    raise FundingError(f"funding transaction {txid_hex(funding_tx)} has no 2-of-2 output for this channel")


@dataclass
class PayerChannel:
    terms: Terms
    key: PrivateKey
    policy: ChannelPolicy
    state: State = State.PROPOSED
    funding: Outpoint | None = None
    funding_tx: Tx | None = None
    refund: Tx | None = None       # fully signed once REFUND_SIGNED
    sent: Update | None = None     # latest update signed and handed out
    acked_seq: int = 0
    acked_amount: int = 0
    closing_txid: str | None = None
    closed_amount: int | None = None  # what the closing tx paid the payee

    @classmethod
    def propose(cls, channel_id: bytes, capacity: int, key: PrivateKey, payer_script: bytes, now: int,
                lock_seconds: int, policy: ChannelPolicy) -> "PayerChannel":
        if not policy.min_capacity <= capacity <= policy.max_capacity:
            raise TermsError(f"capacity {capacity} sat: expected {policy.min_capacity}..{policy.max_capacity}")
        if not policy.min_lock_seconds <= lock_seconds <= policy.max_lock_seconds:
            raise LockTimeError(f"lock duration {lock_seconds} s: expected "
                                f"{policy.min_lock_seconds}..{policy.max_lock_seconds}")
        fee = update_fee(policy.fee_rate)
        if capacity - fee < policy.dust_limit:
            raise DustError(f"capacity {capacity} sat less fee {fee}: below the dust limit {policy.dust_limit}")
        locktime = now + lock_seconds
        if locktime < LOCKTIME_THRESHOLD:
            raise LockTimeError(f"refund lock time {locktime}: expected a Unix time >= {LOCKTIME_THRESHOLD}")
        terms = Terms(channel_id, capacity, fee, locktime, key.public_key.to_bytes(compressed=True), payer_script)
        return cls(terms, key, policy)

    def require_state(self, *states: State) -> None:
        if self.state not in states:
            raise StateError(f"channel {self.terms.channel_id.hex()} is {self.state.value}: "
                             f"expected {' or '.join(s.value for s in states)}")

    def on_accept(self, payee_key: bytes, payee_script: bytes) -> None:
        self.require_state(State.PROPOSED)
        _pubkey(payee_key, "payee key")
        _script(payee_script, "payee script")
        if payee_key == self.terms.payer_key:
            raise TermsError("payee key equals the payer key")
        self.terms = replace(self.terms, payee_key=payee_key, payee_script=payee_script)
        self.state = State.ACCEPTED

    def funding_output(self) -> TxOutput:
        self.require_state(State.ACCEPTED)
        return TxOutput(self.terms.capacity, self.terms.funding_script)

    def refund_request(self, funding_tx: Tx) -> Tx:
        """Record the (signed, unbroadcast) funding tx; return the unsigned refund."""
        self.require_state(State.ACCEPTED)
        op = _check_funding_tx(self.terms, funding_tx, None)
        self.funding, self.funding_tx = op, funding_tx
        self.state = State.FUNDING
        return refund_tx(self.terms, op)

    def on_refund_signature(self, payee_sig: bytes) -> Tx:
        """Check the payee's refund signature, complete and verify the refund."""
        self.require_state(State.FUNDING)
        assert self.funding is not None
        tx = refund_tx(self.terms, self.funding)
        prev = TxOutput(self.terms.capacity, self.terms.funding_script)
        if not signature_valid(tx, 0, PublicKey.from_bytes(self.terms.payee_key), prev, payee_sig):
            raise SignatureError(f"payee's refund signature does not verify for {txid_hex(tx)}")
        tx.inputs[0].script_sig = multisig_script_sig(sign_input(tx, 0, self.key, prev), payee_sig)
        try:
            verify_transaction(tx, [prev], dust_limit=self.policy.dust_limit)
        except TransactionError as e:
            raise SignatureError(f"refund fails verification: {e}") from e
        self.refund = tx
        self.state = State.REFUND_SIGNED
        return tx

    def on_funded(self) -> None:
        """The funding tx was broadcast and the payee acknowledged it."""
        self.require_state(State.REFUND_SIGNED)
        self.state = State.OPEN

    @property
    def paid(self) -> int:
        """What the payee can claim: the latest amount signed."""
        return self.sent.amount if self.sent else 0

    @property
    def remaining(self) -> int:
        return self.terms.max_payment - self.paid

    def pay(self, amount: int, now: int) -> Update:
        """Sign an update adding `amount` sat for the payee."""
        self.require_state(State.OPEN)
        if amount <= 0:
            raise AmountError(f"payment of {amount} sat: expected > 0")
        if now >= self.terms.refund_locktime - self.policy.close_margin:
            raise LockTimeError(f"time {now} is within the close margin {self.policy.close_margin} s of the refund "
                                f"lock time {self.terms.refund_locktime}: the channel must close")
        total = self.paid + amount
        check_amount(self.terms, total, self.policy.dust_limit)
        assert self.funding is not None
        tx = update_tx(self.terms, self.funding, total, self.policy.dust_limit)
        sig = sign_input(tx, 0, self.key, TxOutput(self.terms.capacity, self.terms.funding_script))
        update = Update((self.sent.seq if self.sent else 0) + 1, total, sig)
        self.sent = update
        return update

    def on_ack(self, seq: int, amount: int) -> None:
        if self.sent is None or seq != self.sent.seq or amount != self.sent.amount:
            raise StaleUpdate(f"ack for update {seq} ({amount} sat): expected "
                              f"{self.sent.seq if self.sent else None} ({self.paid} sat)")
        if seq <= self.acked_seq:
            raise DuplicateUpdate(f"ack for update {seq}: already acknowledged up to {self.acked_seq}")
        self.acked_seq, self.acked_amount = seq, amount

    def refund_for_broadcast(self, now: int) -> Tx:
        """The signed refund, once its lock time has passed."""
        self.require_state(State.REFUND_SIGNED, State.OPEN)
        assert self.refund is not None
        if now <= self.terms.refund_locktime:  # final once the lock time is strictly past
            raise LockTimeError(f"refund lock time {self.terms.refund_locktime} not passed at {now}")
        return self.refund

    def on_refunded(self) -> None:
        self.require_state(State.REFUND_SIGNED, State.OPEN)
        self.state = State.REFUNDED

    def on_close(self, close_tx: Tx) -> None:
        """The payee closed: check the closing tx pays us what we did not pay."""
        self.require_state(State.OPEN)
        assert self.funding is not None
        if len(close_tx.inputs) != 1 or Outpoint(close_tx.inputs[0].prev_hash, close_tx.inputs[0].prev_idx) \
                != self.funding:
            raise FundingError(f"closing tx {txid_hex(close_tx)} does not spend the funding output {self.funding}")
        prev = TxOutput(self.terms.capacity, self.terms.funding_script)
        try:
            verify_transaction(close_tx, [prev], dust_limit=self.policy.dust_limit)
        except TransactionError as e:
            raise SignatureError(f"closing tx fails verification: {e}") from e
        back = sum(o.value for o in close_tx.outputs if bytes(o.script_pubkey) == self.terms.payer_script)
        owed = self.terms.capacity - self.terms.fee - self.paid
        if owed >= self.policy.dust_limit and back < owed:
            raise AmountError(f"closing tx returns {back} sat to the payer: expected {owed}")
        # An older state (the payee missed our last update) pays the payee less; that is its loss.
        self.closed_amount = sum(o.value for o in close_tx.outputs
                                 if bytes(o.script_pubkey) == self.terms.payee_script)
        self.closing_txid = txid_hex(close_tx)
        self.state = State.CLOSED


@dataclass
class PayeeChannel:
    terms: Terms
    key: PrivateKey
    policy: ChannelPolicy
    state: State = State.ACCEPTED
    funding: Outpoint | None = None
    latest: Update | None = None
    closing_tx: Tx | None = None
    # The payer acknowledged our `closed` notice: until then the lifecycle
    # keeps telling it (a notice lost in a crash or a network cut would
    # otherwise leave the payer believing the channel open).
    payer_notified: bool = False
    # The funding tx as the chain shows it, watched by the lifecycle: enough
    # confirmations (no more watching), or gone from the chain (dropped or
    # double-spent: updates on it would be worthless, so none are taken).
    funding_confirmed: bool = False
    funding_lost: bool = False

    @classmethod
    def accept(cls, channel_id: bytes, capacity: int, fee: int, refund_locktime: int, payer_key: bytes,
               payer_script: bytes, key: PrivateKey, payee_script: bytes, now: int,
               policy: ChannelPolicy) -> "PayeeChannel":
        """Check a payer's proposal against our policy and take it."""
        if len(channel_id) != 16:
            raise TermsError(f"channel id of {len(channel_id)} bytes: expected 16")
        if not policy.min_capacity <= capacity <= policy.max_capacity:
            raise TermsError(f"capacity {capacity} sat: expected {policy.min_capacity}..{policy.max_capacity}")
        want_fee = update_fee(policy.fee_rate)
        if fee < want_fee:
            raise FeeError(f"channel fee {fee} sat: expected at least {want_fee} ({policy.fee_rate} sat/kB)")
        if fee > capacity // 2:
            raise FeeError(f"channel fee {fee} sat: more than half the capacity {capacity}")
        if refund_locktime < LOCKTIME_THRESHOLD:
            raise LockTimeError(f"refund lock time {refund_locktime}: expected a Unix time >= {LOCKTIME_THRESHOLD}")
        lead = refund_locktime - now
        if lead < policy.min_lock_seconds + policy.close_margin:
            raise LockTimeError(f"refund lock time {refund_locktime} is {lead} s away: expected at least "
                                f"{policy.min_lock_seconds + policy.close_margin} s (lock + close margin)")
        if lead > policy.max_lock_seconds:
            raise LockTimeError(f"refund lock time {refund_locktime} is {lead} s away: expected at most "
                                f"{policy.max_lock_seconds} s")
        _pubkey(payer_key, "payer key")
        _script(payer_script, "payer script")
        mine = key.public_key.to_bytes(compressed=True)
        if payer_key == mine:
            raise TermsError("payer key equals our key")
        terms = Terms(channel_id, capacity, fee, refund_locktime, payer_key, payer_script, mine, payee_script)
        return cls(terms, key, policy)

    def require_state(self, *states: State) -> None:
        if self.state not in states:
            raise StateError(f"channel {self.terms.channel_id.hex()} is {self.state.value}: "
                             f"expected {' or '.join(s.value for s in states)}")

    @property
    def prevout(self) -> TxOutput:
        return TxOutput(self.terms.capacity, self.terms.funding_script)

    def sign_refund(self, funding: Outpoint, refund: Tx) -> bytes:
        """Sign the payer's refund if it is the refund we agreed to."""
        self.require_state(State.ACCEPTED)
        want = refund_tx(self.terms, funding)
        if refund.to_bytes() != want.to_bytes():
            if refund.locktime != self.terms.refund_locktime:
                raise LockTimeError(f"refund lock time {refund.locktime}: expected {self.terms.refund_locktime}")
            if any(i.sequence == SEQUENCE_FINAL for i in refund.inputs):
                raise LockTimeError("refund input sequence is final, which would disable its lock time")
            raise TermsError(f"refund {txid_hex(refund)} differs from the agreed refund {txid_hex(want)}")
        sig = sign_input(want, 0, self.key, self.prevout)
        self.funding = funding
        self.state = State.REFUND_SIGNED
        return sig

    def on_funded(self, funding_tx: Tx) -> None:
        self.require_state(State.REFUND_SIGNED)
        _check_funding_tx(self.terms, funding_tx, self.funding)
        self.state = State.OPEN

    @property
    def received(self) -> int:
        return self.latest.amount if self.latest else 0

    @property
    def seq(self) -> int:
        return self.latest.seq if self.latest else 0

    def check_update(self, update: Update, now: int) -> int:
        """All checks of `receive` without changing anything; returns the increase."""
        self.require_state(State.OPEN)
        seq = self.seq
        if update.seq == seq and self.latest is not None and update.amount == self.latest.amount \
                and update.payer_sig == self.latest.payer_sig:
            raise DuplicateUpdate(f"update {update.seq} ({update.amount} sat) already received")
        if update.seq <= seq:
            raise StaleUpdate(f"update {update.seq}: expected {seq + 1} (latest is {seq})")
        if update.seq != seq + 1:
            raise SequenceGap(f"update {update.seq}: expected {seq + 1}")
        if update.amount <= self.received:
            raise AmountError(f"update {update.seq} pays {update.amount} sat in total: expected more than "
                              f"{self.received} (totals only grow)")
        check_amount(self.terms, update.amount, self.policy.dust_limit)
        if now >= self.terms.refund_locktime - self.policy.close_margin:
            raise LockTimeError(f"time {now} is within the close margin {self.policy.close_margin} s of the refund "
                                f"lock time {self.terms.refund_locktime}: no more updates, the channel closes")
        if self.funding_lost:
            raise FundingError(f"the funding of channel {self.terms.channel_id.hex()} is not on the chain: "
                               "no updates until it is back")
        assert self.funding is not None
        tx = update_tx(self.terms, self.funding, update.amount, self.policy.dust_limit)
        if not signature_valid(tx, 0, PublicKey.from_bytes(self.terms.payer_key), self.prevout, update.payer_sig):
            raise SignatureError(f"update {update.seq} ({update.amount} sat): payer signature does not verify")
        return update.amount - self.received

    def receive(self, update: Update, now: int, full_check: bool = False) -> int:
        """Take a payment update; returns the increase in sat. With
        `full_check`, also countersign and run the complete update through
        the interpreter (what `closing_tx` does)."""
        delta = self.check_update(update, now)
        if full_check:
            self.complete_update(update)
        self.latest = update
        return delta

    def complete_update(self, update: Update) -> Tx:
        assert self.funding is not None
        tx = update_tx(self.terms, self.funding, update.amount, self.policy.dust_limit)
        tx.inputs[0].script_sig = multisig_script_sig(update.payer_sig, sign_input(tx, 0, self.key, self.prevout))
        try:
            verify_transaction(tx, [self.prevout], dust_limit=self.policy.dust_limit, min_fee=self.terms.fee)
        except TransactionError as e:
            raise SignatureError(f"update {update.seq} fails verification: {e}") from e
        return tx

    def must_close(self, now: int) -> bool:
        return self.state == State.OPEN and now >= self.terms.refund_locktime - self.policy.close_margin

    def is_full(self, below: int) -> bool:
        """Less than `below` sat left to receive: worth closing now, since
        the payer has to move to a new channel soon anyway."""
        return self.state == State.OPEN and self.terms.max_payment - self.received < below

    def close(self, now: int) -> Tx:
        """Countersign the latest update: the closing tx to broadcast."""
        self.require_state(State.OPEN, State.CLOSING)
        if self.latest is None:
            raise AmountError("no payment received: nothing to close with (the payer's refund returns the funds)")
        if now >= self.terms.refund_locktime:
            raise LockTimeError(f"time {now} is past the refund lock time {self.terms.refund_locktime}: "
                                "the payer's refund may already be valid")
        tx = self.complete_update(self.latest)
        self.closing_tx = tx
        self.state = State.CLOSING
        return tx

    def on_closed(self) -> None:
        self.require_state(State.CLOSING)
        self.state = State.CLOSED
