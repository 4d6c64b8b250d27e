/*
 * ring.pml: a SPIN model of the usbvirt URB ring (src/rings) and the wake-up
 * protocol around it (doorbell + event indices + adaptive spin), with the
 * frontend's unlink reserve and pending queue (src/frontend/urb-sender.ts, pending-queue.ts)
 * and the backend's consume loop (src/backend/backend.ts, backend-host.ts).
 * See model/README.md for the map from every step to the code.
 *
 * Memory model: every Atomics.* access is one Promela statement (JS Atomics
 * are sequentially consistent, so an interleaving of them is exact). Slot
 * contents are plain (non-atomic) accesses; with honest peers they are
 * data-race-free (written before the SC store of the producer index, read
 * after the SC load that saw it), so by SC-for-DRF they too are exact as
 * interleaved steps. Private cursors are process-local variables; an
 * atomic { } block holds at most one shared access plus local computation.
 *
 * Configurations (-D at spin -a):
 *   (none)          honest frontend + honest backend
 *   HOSTILE_FRONT   a frontend that stores arbitrary reqProd values, honest backend
 *   HOSTILE_BACK    honest frontend, a backend that stores arbitrary rspProd values
 * Broken variants (each must yield a counterexample):
 *   NO_FINAL_CHECK     armAndCheck arms the event index but does not look again
 *   EVENT_AFTER_CHECK  armAndCheck looks again first and arms the event index after
 *   SEQ_AFTER_ARM      the waiter reads the doorbell word after armAndCheck
 *   NO_RESERVE         data URBs may take the slots kept for unlinks
 *   NO_PROD_CHECK      BackRing.unconsumedRequests trusts reqProd
 *   NO_RSP_CHECK       FrontRing.unconsumedResponses trusts rspProd
 */

/* ---- bounds (the code's values in brackets; see test/rings/model-constants.test.ts) ---- */
#ifndef SLOTS
#define SLOTS 4        /* ring slots, a power of two [URB ring: 256] */
#endif
#define MOD 16         /* indices are free-running modulo MOD [2^32]; MOD > 2*SLOTS */
#define INIT 13        /* initialIndex: the run crosses the MOD wrap [initRingHeader(h, initialIndex)] */
#ifndef RESERVE
#define RESERVE 2      /* UNLINK_RESERVED_SLOTS, 1 <= RESERVE < SLOTS [8] */
#endif
#define BATCH 2        /* REQUESTS_PER_POLL [16] */
#ifndef NDATA
#define NDATA 3        /* data URBs the frontend submits (one more than the data slots: one waits pending) */
#endif
#define SPIN 1         /* polls of the adaptive spin before parking (0..SPIN, chosen freely) [time-based] */
#define HOSTILE_WRITES 3 /* index stores of a hostile peer */

#define dist(a, b) (((a) + MOD - (b)) % MOD)   /* ringDistance */
#define adv(a) (((a) + 1) % MOD)                /* ringAdvance(a, 1) */

#ifdef NO_RESERVE
#define DATA_RESERVE 0
#else
#define DATA_RESERVE RESERVE
#endif

/* slot contents (plain memory) */
mtype = { EMPTY, REQ_DATA, REQ_UNLINK, RSP_DATA, RSP_UNLINK };
mtype slotKind[SLOTS];
byte slotTag[SLOTS];           /* the free-running index the writer used for this slot */

/* shared header words (Atomics) */
byte reqProd = INIT;           /* kReqProd, written by the frontend */
byte rspEvent = (INIT + 1) % MOD; /* kRspEvent, frontend */
byte rspProd = INIT;           /* kRspProd, backend */
byte reqEvent = (INIT + 1) % MOD; /* kReqEvent, backend */
byte ringError = 0;            /* kError, sticky, 0 -> fault by CAS */

/* doorbells (doorbell.ts): sequence words, ring() = Atomics.add + notify */
byte frontBell = 0;            /* the frontend waits on it, the backend rings it */
byte backBell = 0;             /* the backend waits on it, the frontend rings it */
bool stop = false;             /* model only: the frontend is done, the backend may exit */

/* ghost state, never read by the protocol: who owns each slot */
#define G_FREE 0               /* the frontend may write a request */
#define G_REQ 1                /* a request written, not yet copied by the backend */
#define G_TAKEN 2              /* copied by the backend, response not yet written */
#define G_RSP 3                /* response written, not yet copied by the frontend */
byte ghost[SLOTS];
byte gReqCons = INIT;          /* the backend's reqCons, for LTL */
byte gRspCons = INIT;          /* the frontend's rspCons, for LTL */
bool done = false;             /* every URB and unlink completed */

/* Atomics.wait(word, seq): returns at once when the word moved, else sleeps
 * until a notify that follows a change; ring() changes the word before it
 * notifies, so "block until word != seq" is exactly that (no spurious
 * wake-ups modelled: they only add safe returns). */
#define PARK(bell, seq) (bell != seq)

/* ====================================================================== */
/* Frontend end (front-ring.ts FrontRing)                                  */
/* ====================================================================== */

/* FrontRing.unconsumedResponses(): checked load of rspProd */
inline f_unconsumed(n) {
  if
  :: f_fault -> n = 0
  :: else ->
     atomic {
       prod = rspProd;                               /* Atomics.load(kRspProd) */
#ifndef NO_RSP_CHECK
       if
       :: dist(prod, rspCons) > dist(reqProdPushed, rspCons) ->
          f_fault = 1; n = 0                         /* latch RESPONSE_PROD_OVERFLOW (local part) */
       :: else ->
#endif
          rspProdSeen = prod; n = dist(prod, rspCons)
#ifndef NO_RSP_CHECK
       fi
#endif
       ;prod = 0
     }
     if
     :: f_fault && ringError == 0 -> ringError = 2   /* Atomics.compareExchange(kError, 0, fault) */
     :: else -> skip
     fi
  fi
}

/* FrontRing.hasPending() */
inline f_hasPending(res) {
  if
  :: f_fault || rspCons != rspProdSeen -> res = 1
  :: else -> f_unconsumed(n); atomic { res = (n > 0); n = 0 }
  fi
}

/* FrontRing.armAndCheck(): RING_FINAL_CHECK_FOR_RESPONSES */
inline f_armAndCheck(res) {
  f_hasPending(res);
  if
  :: res -> skip
  :: else ->
#if defined(EVENT_AFTER_CHECK)
     f_hasPending(res);
     rspEvent = adv(rspCons)                         /* Atomics.store(kRspEvent), too late */
#elif defined(NO_FINAL_CHECK)
     rspEvent = adv(rspCons);
     res = 0
#else
     rspEvent = adv(rspCons);                        /* Atomics.store(kRspEvent, rspCons + 1) */
     f_hasPending(res)                               /* look once more */
#endif
  fi
}

/* FrontRing.takeResponse(): copy the slot, then advance rspCons */
inline f_take(ok) {
  if
  :: rspCons == rspProdSeen -> f_unconsumed(n)
  :: else -> n = 1
  fi;
  if
  :: n > 0 && !f_fault -> n = 0;
     atomic {
       ck = slotKind[rspCons % SLOTS];               /* into.set(slot): plain reads */
#ifdef HOSTILE_BACK
       /* never a slot this end did not publish a request into */
       assert(ghost[rspCons % SLOTS] != G_FREE);
       ghost[rspCons % SLOTS] = G_FREE;
#else
       /* no stale read: the response published for this very index */
       assert(ghost[rspCons % SLOTS] == G_RSP && slotTag[rspCons % SLOTS] == rspCons);
       assert(ck == RSP_DATA || ck == RSP_UNLINK);
       ghost[rspCons % SLOTS] = G_FREE;
#endif
       rspCons = adv(rspCons);
       gRspCons = rspCons
     };
     ok = 1
  :: else -> ok = 0
  fi
}

/* FrontRing.requestSlot() + write + commitRequest(); free > need, else nothing taken */
inline f_commit(kind, need, ok) {
  if
  :: !f_fault && SLOTS - dist(reqProdPvt, rspCons) > need ->
     atomic {
       /* no overflow: the slot's response was consumed (or it was never used) */
       assert(ghost[reqProdPvt % SLOTS] == G_FREE);
       slotKind[reqProdPvt % SLOTS] = kind;          /* plain writes into the slot */
       slotTag[reqProdPvt % SLOTS] = reqProdPvt;
       ghost[reqProdPvt % SLOTS] = G_REQ;
       reqProdPvt = adv(reqProdPvt)
     };
     ok = 1
  :: else -> ok = 0
  fi
}

/* controller.trySend (data): refuse when free <= UNLINK_RESERVED_SLOTS */
inline f_sendData(ok) {
  f_commit(REQ_DATA, DATA_RESERVE, ok);
  if :: ok -> dataIn++ :: else -> skip fi
}

/* controller.trySendUnlink: any free slot */
inline f_sendUnlink(ok) {
  /* the reserve: while fewer than RESERVE unlinks hold slots, one is free */
  assert(unlIn >= RESERVE || f_fault || SLOTS - dist(reqProdPvt, rspCons) >= 1);
  f_commit(REQ_UNLINK, 0, ok);
  if :: ok -> unlIn++ :: else -> skip fi
}

/* FrontRing.pushRequests() + backendBell.ring() when asked (controller.publish) */
inline f_publish() {
  atomic { old = reqProdPushed; reqProdPushed = reqProdPvt; reqProd = reqProdPvt }  /* Atomics.store(kReqProd) */
  ev = reqEvent;                                      /* Atomics.load(kReqEvent) */
  if
  :: dist(reqProdPushed, ev) < dist(reqProdPushed, old) -> atomic { ev = 0; old = 0; backBell++ }  /* Atomics.add + notify */
  :: else -> ev = 0; old = 0
  fi
}

/* Doorbell.waitAsync(): spin (spin.ts), read the word, armAndCheck, park */
inline f_wait() {
  found = 0; cnt = 0;
  do
  :: !found && cnt < SPIN -> f_hasPending(found); cnt++
  :: else -> cnt = 0; break
  od;
  if
  :: !found ->
#ifdef SEQ_AFTER_ARM
     f_armAndCheck(found);
     seq = frontBell;
#else
     seq = frontBell;                                 /* Atomics.load(bell) */
     f_armAndCheck(found);
#endif
     if
     :: !found ->
f_park: PARK(frontBell, seq)                          /* Atomics.waitAsync(bell, seq) */
     :: else -> skip
     fi;
     seq = 0
  :: else -> skip
  fi
}

/* controller.flushPending(): pending data in order; unlinks overtake a blocked one */
inline f_flushPending() {
  do
  :: pendData > 0 -> f_sendData(ok); if :: ok -> pendData--; ok = 0 :: else -> break fi
  :: else -> break
  od;
  do
  :: pendUnl > 0 -> f_sendUnlink(ok); if :: ok -> pendUnl--; ok = 0 :: else -> break fi
  :: else -> break
  od
}

#ifndef HOSTILE_FRONT
proctype Front() {
  byte reqProdPvt = INIT, reqProdPushed = INIT, rspCons = INIT, rspProdSeen = INIT;
  bit f_fault = 0;
  byte prod, n, ev, old, seq, cnt, handled;
  bit ok, found;
  mtype ck;
  byte toSubmit = NDATA, dataIn = 0, unlIn = 0, pendData = 0, pendUnl = 0;
  bool idlePolled = false;   /* a poll found nothing: the application runs before the next poll */

#define PUSHED (reqProdPvt == reqProdPushed)
#define WANT_UNLINK (toSubmit == 0 && dataIn > unlIn + pendUnl)
#define FINISHED (toSubmit == 0 && dataIn == 0 && unlIn == 0 && pendData == 0 && pendUnl == 0)

  do
  :: FINISHED && PUSHED -> break
  /* the application submits (controller.enqueueOrSend): FIFO behind pending URBs */
  :: toSubmit > 0 ->
     toSubmit--; idlePolled = false;
     if
     :: pendData + pendUnl == 0 -> f_sendData(ok)
     :: else -> ok = 0
     fi;
     if :: !ok -> pendData++ :: else -> ok = 0 fi
  /* publish (deferred within a batch: any number of commits per publish) */
  :: !PUSHED -> f_publish()
  /* cancel a URB the backend holds (an idle interrupt IN): unlinks may bypass the pending queue */
  :: PUSHED && WANT_UNLINK ->
     f_sendUnlink(ok);
     if :: !ok -> pendUnl++ :: else -> ok = 0 fi
  /* the service loop: poll (controller.pollOnce), then wait when there was nothing */
  :: PUSHED && !WANT_UNLINK && !FINISHED && !idlePolled ->
     handled = 0;
     do
     :: handled < SLOTS ->
        f_take(ok);
        if
        :: ok && ck == RSP_UNLINK -> atomic { unlIn--; handled++; ck = EMPTY; ok = 0 }
        :: ok && ck != RSP_UNLINK -> atomic { dataIn--; handled++; ck = EMPTY; ok = 0 }
        :: else -> break
        fi
     :: else -> break
     od;
     f_flushPending();
     if
     :: handled == 0 && toSubmit == 0 && PUSHED -> f_wait()
     :: handled == 0 && toSubmit > 0 -> idlePolled = true
     :: else -> skip
     fi;
     atomic { handled = 0; found = 0; ok = 0 }
  od;
#ifndef HOSTILE_BACK
  assert(!f_fault);               /* an honest backend never trips the checks */
#endif
  done = true;
  stop = true;                    /* model only: let the backend exit */
  backBell++
}
#endif

/* ====================================================================== */
/* Backend end (back-ring.ts BackRing, backend.ts poll, backend-host.ts)   */
/* ====================================================================== */

/* BackRing.unconsumedRequests(): checked load of reqProd */
inline b_unconsumed(n) {
  if
  :: b_fault -> n = 0
  :: else ->
     atomic {
       prod = reqProd;                                /* Atomics.load(kReqProd) */
#ifndef NO_PROD_CHECK
       if
       :: dist(prod, rspProdPvt) > SLOTS || dist(reqCons, rspProdPvt) > dist(prod, rspProdPvt) ->
          b_fault = 1; n = 0                          /* latch REQUEST_PROD_OVERFLOW */
       :: else ->
#endif
          reqProdSeen = prod; n = dist(prod, reqCons)
#ifndef NO_PROD_CHECK
       fi
#endif
       ;prod = 0
     }
     if
     :: b_fault && ringError == 0 -> ringError = 1
     :: else -> skip
     fi
  fi
}

inline b_hasPending(res) {
  if
  :: b_fault || reqCons != reqProdSeen -> res = 1
  :: else -> b_unconsumed(n); atomic { res = (n > 0); n = 0 }
  fi
}

/* BackRing.armAndCheck(): RING_FINAL_CHECK_FOR_REQUESTS */
inline b_armAndCheck(res) {
  b_hasPending(res);
  if
  :: res -> skip
  :: else ->
#if defined(EVENT_AFTER_CHECK)
     b_hasPending(res);
     reqEvent = adv(reqCons)
#elif defined(NO_FINAL_CHECK)
     reqEvent = adv(reqCons);
     res = 0
#else
     reqEvent = adv(reqCons);                         /* Atomics.store(kReqEvent, reqCons + 1) */
     b_hasPending(res)
#endif
  fi
}

/* BackRing.takeRequest(): copy the slot (RING_COPY_REQUEST), then advance reqCons */
inline b_take(ok) {
  if
  :: reqCons == reqProdSeen -> b_unconsumed(n)
  :: else -> n = 1
  fi;
  if
  :: n > 0 && !b_fault -> n = 0;
     atomic {
       ck = slotKind[reqCons % SLOTS];                /* into.set(slot): plain reads, one copy */
#ifdef HOSTILE_FRONT
       /* never a slot holding a request it took and has not answered */
       assert(ghost[reqCons % SLOTS] != G_TAKEN);
       assert(dist(reqCons, rspProdPvt) < SLOTS);
#else
       assert(ghost[reqCons % SLOTS] == G_REQ && slotTag[reqCons % SLOTS] == reqCons);
       assert(ck == REQ_DATA || ck == REQ_UNLINK);
#endif
       ghost[reqCons % SLOTS] = G_TAKEN;
       reqCons = adv(reqCons);
       gReqCons = reqCons
     };
     ok = 1
  :: else -> ok = 0
  fi
}

/* BackRing.responseSlot() + write + commitResponse() */
inline b_respond(kind) {
  atomic {
    assert(dist(reqCons, rspProdPvt) > 0);            /* only a consumed request is answered */
    assert(ghost[rspProdPvt % SLOTS] == G_TAKEN);     /* never over a request not yet copied */
    slotKind[rspProdPvt % SLOTS] = kind;
    slotTag[rspProdPvt % SLOTS] = rspProdPvt;
    ghost[rspProdPvt % SLOTS] = G_RSP;
    rspProdPvt = adv(rspProdPvt)
  }
}

/* BackRing.pushResponses() + frontendBell.ring() */
inline b_publish() {
  if
  :: rspProdPushed != rspProdPvt ->
     atomic { old = rspProdPushed; rspProdPushed = rspProdPvt; rspProd = rspProdPvt }  /* Atomics.store(kRspProd) */
     ev = rspEvent;                                    /* Atomics.load(kRspEvent) */
     if
     :: dist(rspProdPushed, ev) < dist(rspProdPushed, old) -> atomic { ev = 0; old = 0; frontBell++ }
     :: else -> ev = 0; old = 0
     fi
  :: else -> skip
  fi
}

proctype Back() {
  byte reqCons = INIT, reqProdSeen = INIT, rspProdPvt = INIT, rspProdPushed = INIT;
  bit b_fault = 0;
  byte prod, n, ev, old, seq, cnt, taken;
  bit ok, found;
  mtype ck;
  byte held = 0;              /* data URBs the device has not completed (the port ring, abstracted) */

  do
  :: b_fault -> break         /* backend-host: a ring fault stops consumption until the owner resets */
  :: else ->
     /* backend.poll(): take up to BATCH requests, answer, publish */
     taken = 0;
     do
     :: taken < BATCH ->
        b_take(ok);
        if
        :: ok ->
           taken++;
           if
           :: ck == REQ_DATA || ck == RSP_DATA ->
              if
              :: b_respond(RSP_DATA)                   /* the device completes it now */
              :: held++                                /* or holds it until it is unlinked */
              fi
           :: ck == REQ_UNLINK ->
              if
              :: held > 0 -> held--; b_respond(RSP_DATA)   /* the target, cancelled */
              :: else -> skip                              /* the target had completed: -ENOENT */
              fi;
              b_respond(RSP_UNLINK)
           :: else -> b_respond(RSP_DATA)              /* a bad request gets an error response */
           fi;
           atomic { ck = EMPTY; ok = 0 }
        :: else -> break
        fi
     :: else -> break
     od;
     b_publish();
     if
     :: taken == 0 && !b_fault ->
        /* Doorbell.waitAsync(): spin, read the word, armAndCheck, park */
        found = 0; cnt = 0;
        do
        :: !found && cnt < SPIN -> b_hasPending(found); cnt++
        :: else -> cnt = 0; break
        od;
        if
        :: !found ->
#ifdef SEQ_AFTER_ARM
           b_armAndCheck(found);
           seq = backBell;
#else
           seq = backBell;
           b_armAndCheck(found);
#endif
           if
           :: !found && stop -> break                  /* model only: the frontend finished */
           :: !found && !stop ->
b_park:       PARK(backBell, seq)
           :: else -> skip
           fi;
           seq = 0
        :: else -> skip
        fi
     :: else -> skip
     fi;
     atomic { taken = 0; found = 0; ok = 0 }
  od;
#ifndef HOSTILE_FRONT
  assert(!b_fault);            /* an honest frontend never trips the checks */
#endif
  skip
}

/* ====================================================================== */
/* Hostile peers: store arbitrary index values and ring the doorbell        */
/* ====================================================================== */

#ifdef HOSTILE_FRONT
proctype Front() {
  byte k = 0, v;
  do
  :: k < HOSTILE_WRITES ->
     k++;
     select(v : 0 .. MOD - 1);
     reqProd = v;
     backBell++
  :: else -> break
  od;
  stop = true;
  backBell++
}
#endif

#ifdef HOSTILE_BACK
/* replaces Back(): never writes a response, only rspProd */
proctype Hostile() {
  byte k = 0, v;
  do
  :: k < HOSTILE_WRITES ->
     k++;
     select(v : 0 .. MOD - 1);
     rspProd = v;
     frontBell++
  :: else -> break
  od
}
#endif

init {
  byte i;
  for (i : 0 .. SLOTS - 1) {
#ifdef HOSTILE_FRONT
    slotKind[i] = REQ_DATA;     /* well-formed requests everywhere: the backend may hold each */
#else
    slotKind[i] = EMPTY;
#endif
    ghost[i] = G_FREE
  }
  atomic {
    run Front();
#ifdef HOSTILE_BACK
    run Hostile()
#else
    run Back()
#endif
  }
}

/* Liveness under weak fairness (pan -a -f -N name) */
ltl done_eventually { <> done }
ltl requests_consumed { [] ((reqProd != gReqCons) -> <> (reqProd == gReqCons)) }
ltl responses_consumed { [] ((rspProd != gRspCons) -> <> (rspProd == gRspCons)) }
