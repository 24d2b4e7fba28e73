"""The DICOM Upper Layer state machine (PS3.8 9.2): states Sta1-Sta13, events Evt1-Evt19,
and the state transition table (PS3.8 Table 9-10) as data.

The acceptor and the requestor each keep a ``Machine`` per association and ``fire`` every
event through it: the table, not scattered ``if`` tests, says what a PDU means in the current
state, and a PDU the table does not allow there becomes AA-8 (A-ABORT) as PS3.8 prescribes.
``fire`` is one dict lookup (it runs for every P-DATA-TF of a C-STORE).

Two cells of PS3.8 depend on more than (state, event):

* AE-6 goes to Sta3 when the A-ASSOCIATE-RQ is acceptable, else it rejects at once (Sta13).
  Here it always goes to Sta3: our rejections are decisions of the local user (calling AE
  title, application context, load), so they are Evt8 -> AE-8 -> Sta13.
* AR-8 (release collision) goes to Sta9 on the association-requestor and to Sta10 on the
  association-acceptor: each role has its own table (``REQUESTOR_TABLE``, ``ACCEPTOR_TABLE``).

Cells PS3.8 leaves blank are not in the tables; ``fire`` raises ``InvalidTransition`` (a
``ProtocolError``: the association is aborted) for them.
"""

from __future__ import annotations

from enum import IntEnum

from .pdu import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    P_DATA_TF,
    ProtocolError,
)


class State(IntEnum):
    STA1 = 1  # Idle
    STA2 = 2  # Transport connection open (awaiting A-ASSOCIATE-RQ PDU)
    STA3 = 3  # Awaiting local A-ASSOCIATE response primitive
    STA4 = 4  # Awaiting transport connection opening to complete
    STA5 = 5  # Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU
    STA6 = 6  # Association established and ready for data transfer
    STA7 = 7  # Awaiting A-RELEASE-RP PDU
    STA8 = 8  # Awaiting local A-RELEASE response primitive
    STA9 = 9  # Release collision requestor side: awaiting A-RELEASE response primitive
    STA10 = 10  # Release collision acceptor side: awaiting A-RELEASE-RP PDU
    STA11 = 11  # Release collision requestor side: awaiting A-RELEASE-RP PDU
    STA12 = 12  # Release collision acceptor side: awaiting A-RELEASE response primitive
    STA13 = 13  # Awaiting transport connection close indication


class Event(IntEnum):
    EVT1 = 1  # A-ASSOCIATE request (local user)
    EVT2 = 2  # Transport connect confirmation (local transport service)
    EVT3 = 3  # A-ASSOCIATE-AC PDU received
    EVT4 = 4  # A-ASSOCIATE-RJ PDU received
    EVT5 = 5  # Transport connection indication (local transport service)
    EVT6 = 6  # A-ASSOCIATE-RQ PDU received
    EVT7 = 7  # A-ASSOCIATE response primitive (accept)
    EVT8 = 8  # A-ASSOCIATE response primitive (reject)
    EVT9 = 9  # P-DATA request primitive
    EVT10 = 10  # P-DATA-TF PDU received
    EVT11 = 11  # A-RELEASE request primitive
    EVT12 = 12  # A-RELEASE-RQ PDU received
    EVT13 = 13  # A-RELEASE-RP PDU received
    EVT14 = 14  # A-RELEASE response primitive
    EVT15 = 15  # A-ABORT request primitive
    EVT16 = 16  # A-ABORT PDU received
    EVT17 = 17  # Transport connection closed indication
    EVT18 = 18  # ARTIM timer expired
    EVT19 = 19  # Unrecognized or invalid PDU received


class Action(IntEnum):
    """PS3.8 Tables 9-6 to 9-9; the comment says what the action does and its next state."""
    AE_1 = 101  # issue TRANSPORT CONNECT request -> Sta4
    AE_2 = 102  # send A-ASSOCIATE-RQ PDU -> Sta5
    AE_3 = 103  # issue A-ASSOCIATE confirmation (accept) -> Sta6
    AE_4 = 104  # issue A-ASSOCIATE confirmation (reject), close transport -> Sta1
    AE_5 = 105  # issue transport connection response, start ARTIM -> Sta2
    AE_6 = 106  # stop ARTIM, issue A-ASSOCIATE indication -> Sta3 (see the module docstring)
    AE_7 = 107  # send A-ASSOCIATE-AC PDU -> Sta6
    AE_8 = 108  # send A-ASSOCIATE-RJ PDU, start ARTIM -> Sta13
    DT_1 = 201  # send P-DATA-TF PDU -> Sta6
    DT_2 = 202  # issue P-DATA indication -> Sta6
    AR_1 = 301  # send A-RELEASE-RQ PDU -> Sta7
    AR_2 = 302  # issue A-RELEASE indication -> Sta8
    AR_3 = 303  # issue A-RELEASE confirmation, close transport -> Sta1
    AR_4 = 304  # send A-RELEASE-RP PDU, start ARTIM -> Sta13
    AR_5 = 305  # stop ARTIM -> Sta1
    AR_6 = 306  # issue P-DATA indication -> Sta7
    AR_7 = 307  # send P-DATA-TF PDU -> Sta8
    AR_8 = 308  # issue A-RELEASE indication (collision) -> Sta9 (requestor) or Sta10 (acceptor)
    AR_9 = 309  # send A-RELEASE-RP PDU -> Sta11
    AR_10 = 310  # issue A-RELEASE confirmation -> Sta12
    AA_1 = 401  # send A-ABORT PDU (service-user), (re)start ARTIM -> Sta13
    AA_2 = 402  # stop ARTIM if running, close transport -> Sta1
    AA_3 = 403  # issue A-ABORT / A-P-ABORT indication, close transport -> Sta1
    AA_4 = 404  # issue A-P-ABORT indication -> Sta1
    AA_5 = 405  # stop ARTIM -> Sta1
    AA_6 = 406  # ignore PDU -> Sta13
    AA_7 = 407  # send A-ABORT PDU -> Sta13
    AA_8 = 408  # send A-ABORT PDU (service-provider), issue A-P-ABORT indication, start ARTIM -> Sta13

    @property
    def label(self) -> str:
        """The PS3.8 name, e.g. "AR-8"."""
        return self.name.replace("_", "-")


S, E, A = State, Event, Action

# Next state of each action; AR-8 is resolved per role below.
NEXT_STATE: dict[Action, State] = {
    A.AE_1: S.STA4, A.AE_2: S.STA5, A.AE_3: S.STA6, A.AE_4: S.STA1, A.AE_5: S.STA2, A.AE_6: S.STA3,
    A.AE_7: S.STA6, A.AE_8: S.STA13,
    A.DT_1: S.STA6, A.DT_2: S.STA6,
    A.AR_1: S.STA7, A.AR_2: S.STA8, A.AR_3: S.STA1, A.AR_4: S.STA13, A.AR_5: S.STA1, A.AR_6: S.STA7,
    A.AR_7: S.STA8, A.AR_9: S.STA11, A.AR_10: S.STA12,
    A.AA_1: S.STA13, A.AA_2: S.STA1, A.AA_3: S.STA1, A.AA_4: S.STA1, A.AA_5: S.STA1, A.AA_6: S.STA13,
    A.AA_7: S.STA13, A.AA_8: S.STA13,
}

# PS3.8 Table 9-10, one row per event: {state: action}. Blank cells are left out.
_CONNECTED = tuple(State(n) for n in range(5, 13))  # Sta5..Sta12
_ROWS: dict[Event, dict[State, Action]] = {
    E.EVT1: {S.STA1: A.AE_1},
    E.EVT2: {S.STA4: A.AE_2},
    E.EVT3: {S.STA2: A.AA_1, S.STA3: A.AA_8, **{s: A.AA_8 for s in _CONNECTED}, S.STA5: A.AE_3, S.STA13: A.AA_6},
    E.EVT4: {S.STA2: A.AA_1, S.STA3: A.AA_8, **{s: A.AA_8 for s in _CONNECTED}, S.STA5: A.AE_4, S.STA13: A.AA_6},
    E.EVT5: {S.STA1: A.AE_5},
    E.EVT6: {S.STA2: A.AE_6, S.STA3: A.AA_8, **{s: A.AA_8 for s in _CONNECTED}, S.STA13: A.AA_7},
    E.EVT7: {S.STA3: A.AE_7},
    E.EVT8: {S.STA3: A.AE_8},
    E.EVT9: {S.STA6: A.DT_1, S.STA8: A.AR_7},
    E.EVT10: {S.STA2: A.AA_1, S.STA3: A.AA_8, **{s: A.AA_8 for s in _CONNECTED}, S.STA6: A.DT_2, S.STA7: A.AR_6,
              S.STA13: A.AA_6},
    E.EVT11: {S.STA6: A.AR_1},
    E.EVT12: {S.STA2: A.AA_1, S.STA3: A.AA_8, **{s: A.AA_8 for s in _CONNECTED}, S.STA6: A.AR_2, S.STA7: A.AR_8,
              S.STA13: A.AA_6},
    E.EVT13: {S.STA2: A.AA_1, S.STA3: A.AA_8, **{s: A.AA_8 for s in _CONNECTED}, S.STA7: A.AR_3, S.STA10: A.AR_10,
              S.STA11: A.AR_3, S.STA13: A.AA_6},
    E.EVT14: {S.STA8: A.AR_4, S.STA9: A.AR_9, S.STA12: A.AR_4},
    E.EVT15: {S.STA3: A.AA_1, S.STA4: A.AA_2, **{s: A.AA_1 for s in _CONNECTED}},
    E.EVT16: {S.STA2: A.AA_2, S.STA3: A.AA_3, **{s: A.AA_3 for s in _CONNECTED}, S.STA13: A.AA_2},
    E.EVT17: {S.STA2: A.AA_5, S.STA3: A.AA_4, S.STA4: A.AA_4, **{s: A.AA_4 for s in _CONNECTED}, S.STA13: A.AR_5},
    E.EVT18: {S.STA2: A.AA_2, S.STA13: A.AA_2},
    E.EVT19: {S.STA2: A.AA_1, S.STA3: A.AA_8, **{s: A.AA_8 for s in _CONNECTED}, S.STA13: A.AA_7},
}

Transition = tuple[Action, State]


def _table(requestor: bool) -> dict[State, dict[Event, Transition]]:
    collision = S.STA9 if requestor else S.STA10
    table: dict[State, dict[Event, Transition]] = {state: {} for state in State}
    for event, row in _ROWS.items():
        for state, action in row.items():
            table[state][event] = (action, collision if action is A.AR_8 else NEXT_STATE[action])
    return table


REQUESTOR_TABLE = _table(requestor=True)
ACCEPTOR_TABLE = _table(requestor=False)

# PDU type -> the event its arrival is (anything else is Evt19).
PDU_EVENTS: dict[int, Event] = {
    A_ASSOCIATE_AC: E.EVT3, A_ASSOCIATE_RJ: E.EVT4, A_ASSOCIATE_RQ: E.EVT6, P_DATA_TF: E.EVT10,
    A_RELEASE_RQ: E.EVT12, A_RELEASE_RP: E.EVT13, A_ABORT: E.EVT16,
}

# Actions after which this side sends an A-ABORT PDU.
SENDS_ABORT = frozenset({A.AA_1, A.AA_7, A.AA_8})


class InvalidTransition(ProtocolError):
    """An event PS3.8 does not allow in the current state (a blank cell of Table 9-10)."""


class Machine:
    """One association's Upper Layer state. Not thread-safe: one thread (or event loop) fires."""

    __slots__ = ("_table", "requestor", "state")

    def __init__(self, requestor: bool, state: State = State.STA1) -> None:
        self.state = state
        self.requestor = requestor
        self._table = REQUESTOR_TABLE if requestor else ACCEPTOR_TABLE

    def fire(self, event: Event) -> Action:
        """Move to the next state for ``event``; the action to perform is returned."""
        try:
            action, self.state = self._table[self.state][event]
        except KeyError:
            raise InvalidTransition(f"{event.name} is not valid in {self.state.name}") from None
        return action

    def allows(self, event: Event) -> bool:
        return event in self._table[self.state]

    def pdu(self, kind: int) -> Action:
        """``fire`` for the arrival of a PDU of type ``kind`` (unknown types are Evt19)."""
        return self.fire(PDU_EVENTS.get(kind, E.EVT19))
