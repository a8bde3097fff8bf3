"""Actors on a shared pool, supervised: a failing actor is restarted with fresh state behind the same ref.

    python examples/actor_example.py
"""

from typing import Any

import gilfree


class Account(gilfree.Actor):
    def __init__(self) -> None:
        self.balance = 0

    def receive(self, message: Any) -> int:
        if message < 0 and -message > self.balance:
            raise ValueError(f"cannot withdraw {-message}, balance {self.balance}")
        self.balance += message
        return self.balance


def main() -> None:
    sup = gilfree.Supervisor([Account, Account], strategy="one_for_one", max_restarts=3, within=5.0)
    alice, bob = sup.children
    alice.tell(100)
    bob.tell(50)
    print("alice", alice.ask(-30).result(), "bob", bob.ask(0).result())
    try:
        bob.ask(-500).result()
    except ValueError as e:
        print("bob failed:", e)
    print("bob after restart (fresh state):", bob.ask(0).result(), "alice untouched:", alice.ask(0).result())
    sup.stop()


if __name__ == "__main__":
    main()
