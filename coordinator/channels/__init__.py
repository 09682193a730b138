"""Payment channels between coordinators: BSV one-way (Spilman) channels.

- `txs`: scripts, signing, fee/dust arithmetic and the interpreter check every
  transaction passes before it is stored or sent.
- `wallet`: the coordinator's HD key (encrypted at rest), UTXOs, coin selection.
- `chain`: the broadcast interface and the local SQLite ledger.
- `channel`: the sans-I/O payer and payee state machines.
- `messages`: the signed CBOR messages between coordinators.
- `protocol`: the node that turns messages into channel steps (storage and
  chain plugged in).
- `store`: SQLite persistence (every signed update durable before its ack).
- `transport`: CoAP between coordinators.
- `streaming`: pay-as-delivered energy on top of a channel.
"""
