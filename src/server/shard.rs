//! Cross-shard forwarding: every shard but the owner sends decoded requests to shard 0 over a
//! bounded channel and gets the answers back over another, matched by a request id.
//!
//! Bounded both ways (`limits::SHARD_QUEUE_DEPTH`): a sender waits when the owner is behind,
//! which pushes back on the connection that produced the request instead of queueing.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use glommio::channels::local_channel::{self, LocalSender};
use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};

use crate::error::EtcdError;
use crate::kv::{KvState, Request, Response};
use crate::limits::SHARD_QUEUE_DEPTH;

type Answer = Result<Response, EtcdError>;
type ToOwner = (u64, Request);
type FromOwner = (u64, Answer);

/// The ends one shard takes with it.
pub(crate) enum Links {
    /// Shard 0: one receiver of requests and one sender of answers per other shard.
    Owner(Vec<(SharedReceiver<ToOwner>, SharedSender<FromOwner>)>),
    /// Another shard: its request sender and answer receiver.
    Forwarder(SharedSender<ToOwner>, SharedReceiver<FromOwner>),
}

/// The channels between every shard and the owner, created before the shards start: the
/// ends of every shard, in shard order.
pub(crate) fn mesh(shards: usize) -> Vec<Links> {
    let mut owner_ends = Vec::new();
    let mut forwarders = Vec::new();
    for _ in 1..shards {
        let (req_tx, req_rx) = shared_channel::new_bounded(SHARD_QUEUE_DEPTH);
        let (ans_tx, ans_rx) = shared_channel::new_bounded(SHARD_QUEUE_DEPTH);
        owner_ends.push((req_rx, ans_tx));
        forwarders.push(Links::Forwarder(req_tx, ans_rx));
    }
    let mut links = vec![Links::Owner(owner_ends)];
    links.extend(forwarders);
    links
}

impl Links {
    /// Connects this shard's channel ends (on the shard's own executor); on the owner, creates
    /// the state and starts one task per forwarding shard.
    pub async fn connect(self, make_state: impl FnOnce() -> KvState) -> Owner {
        match self {
            Links::Owner(ends) => {
                let state = Rc::new(RefCell::new(make_state()));
                for (req_rx, ans_tx) in ends {
                    let state = state.clone();
                    glommio::spawn_local(async move {
                        let req_rx = req_rx.connect().await;
                        let ans_tx = ans_tx.connect().await;
                        while let Some((id, req)) = req_rx.recv().await {
                            let answer = state.borrow_mut().execute(req);
                            if ans_tx.send((id, answer)).await.is_err() {
                                break;
                            }
                        }
                    })
                    .detach();
                }
                Owner::Local(state)
            }
            Links::Forwarder(req_tx, ans_rx) => {
                let waiting: Rc<RefCell<HashMap<u64, LocalSender<Answer>>>> = Rc::default();
                let req_tx = req_tx.connect().await;
                let w = waiting.clone();
                glommio::spawn_local(async move {
                    let ans_rx = ans_rx.connect().await;
                    while let Some((id, answer)) = ans_rx.recv().await {
                        let waiter = w.borrow_mut().remove(&id);
                        if let Some(tx) = waiter {
                            // The caller may have given up (deadline); nothing to do then.
                            let _ = tx.try_send(answer);
                        }
                    }
                })
                .detach();
                Owner::Remote(Rc::new(Remote {
                    req_tx,
                    waiting,
                    next_id: Cell::new(0),
                }))
            }
        }
    }
}

pub(crate) struct Remote {
    req_tx: ConnectedSender<ToOwner>,
    waiting: Rc<RefCell<HashMap<u64, LocalSender<Answer>>>>,
    next_id: Cell<u64>,
}

/// How a shard reaches the state.
#[derive(Clone)]
pub(crate) enum Owner {
    Local(Rc<RefCell<KvState>>),
    Remote(Rc<Remote>),
}

impl Owner {
    /// Executes `req` on the owner shard.
    pub async fn call(&self, req: Request) -> Answer {
        match self {
            Owner::Local(state) => state.borrow_mut().execute(req),
            Owner::Remote(r) => {
                let id = r.next_id.get();
                r.next_id.set(id.wrapping_add(1));
                let (tx, rx) = local_channel::new_bounded(1);
                r.waiting.borrow_mut().insert(id, tx);
                if r.req_tx.send((id, req)).await.is_err() {
                    r.waiting.borrow_mut().remove(&id);
                    return Err(EtcdError::Stopped);
                }
                rx.recv().await.unwrap_or(Err(EtcdError::Stopped))
            }
        }
    }
}
