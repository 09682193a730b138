# Readings waiting for the coordinator's acknowledgement.
#
# A reading leaves the outbox only when the coordinator has acknowledged it
# (or refused it for good). When the coordinator stays away long enough for
# the outbox to fill, the oldest reading is dropped: energy counters are
# cumulative, so a later reading still carries all the energy; only the
# time resolution of the gap is lost, and the drop is counted and logged.


class Outbox:
    def __init__(self, capacity):
        self.capacity = capacity
        self.items = []
        self.dropped = 0

    def push(self, seq, message):
        dropped = None
        if len(self.items) >= self.capacity:
            dropped = self.items.pop(0)[0]
            self.dropped += 1
        self.items.append((seq, message))
        return dropped

    def peek(self):
        return self.items[0] if self.items else None

    def pop(self, seq):
        if self.items and self.items[0][0] == seq:
            self.items.pop(0)
            return True
        return False

    def __len__(self):
        return len(self.items)
