//! Splitting a kernel body MCUDA-style into a schedule of regions.
//!
//! ```text
//! block level   statements holding a barrier keep their (block-uniform) control
//!               flow; maximal runs without one become  for warp { warp level }
//! warp level    statements holding a collective keep their (warp-uniform) control
//!               flow; a collective is its own two-phase region; maximal runs
//!               without one become                      for lane { thread code }
//! ```
//!
//! Warps are independent between barriers, and lanes are independent between
//! collectives, so running them one after another is a legal schedule. The
//! verifier guarantees the uniformity this relies on.

use crate::ir::{BufId, Expr, Stmt, VarId};

/// Level at which a control statement's condition is evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    /// Once per block (representative thread 0).
    Block,
    /// Once per warp (representative lane 0).
    Warp,
}

/// A node of the schedule.
#[derive(Debug)]
pub(crate) enum Node<'k> {
    /// `for lane { stmts }` for the current warp.
    Threads { region: usize, stmts: Vec<&'k Stmt> },
    /// `for warp { nodes }` (block level only).
    Warps(Vec<Node<'k>>),
    /// Consecutive, independent warp collectives, run together in two
    /// phases over the lanes (no collective reads another's result).
    Collectives { region: usize, stmts: Vec<&'k Stmt> },
    /// A barrier: in checked mode, the end of a race-tracking interval.
    Barrier,
    /// A uniform `for`, `if` or `while` whose body holds barriers or collectives.
    Control {
        region: usize,
        level: Level,
        stmt: &'k Stmt,
        body: Vec<Node<'k>>,
        otherwise: Vec<Node<'k>>,
    },
}

pub(crate) fn has_barrier(s: &Stmt) -> bool {
    match s {
        Stmt::Barrier => true,
        Stmt::For { body, .. } | Stmt::While { body, .. } | Stmt::Unroll { body, .. } => {
            body.iter().any(has_barrier)
        }
        Stmt::If {
            then, otherwise, ..
        } => then.iter().chain(otherwise).any(has_barrier),
        _ => false,
    }
}

pub(crate) fn has_collective(s: &Stmt) -> bool {
    match s {
        Stmt::Collective { .. } => true,
        Stmt::For { body, .. } | Stmt::While { body, .. } | Stmt::Unroll { body, .. } => {
            body.iter().any(has_collective)
        }
        Stmt::If {
            then, otherwise, ..
        } => then.iter().chain(otherwise).any(has_collective),
        _ => false,
    }
}

/// Builds the schedule and counts regions.
pub(crate) struct Splitter {
    pub regions: usize,
}

impl Splitter {
    fn next(&mut self) -> usize {
        self.regions += 1;
        self.regions - 1
    }

    pub fn block<'k>(&mut self, stmts: &'k [Stmt]) -> Vec<Node<'k>> {
        let mut out = Vec::new();
        let mut run: Vec<&'k Stmt> = Vec::new();
        for s in stmts {
            if has_barrier(s) {
                if !run.is_empty() {
                    out.push(Node::Warps(self.warp(std::mem::take(&mut run))));
                }
                out.push(self.control(s, Level::Block));
            } else {
                run.push(s);
            }
        }
        if !run.is_empty() {
            out.push(Node::Warps(self.warp(run)));
        }
        out
    }

    fn warp<'k>(&mut self, stmts: Vec<&'k Stmt>) -> Vec<Node<'k>> {
        let mut out = Vec::new();
        let mut run: Vec<&'k Stmt> = Vec::new();
        for s in stmts {
            if has_collective(s) {
                if !run.is_empty() {
                    let region = self.next();
                    out.push(Node::Threads {
                        region,
                        stmts: std::mem::take(&mut run),
                    });
                }
                if let (Stmt::Collective { .. }, Some(Node::Collectives { stmts: batch, .. })) =
                    (s, out.last_mut())
                {
                    // A matrix operation runs alone (its scratch is its own).
                    if !is_mma(s) && !batch.iter().any(|b| is_mma(b)) && independent(batch, s) {
                        batch.push(s);
                        continue;
                    }
                }
                out.push(self.control(s, Level::Warp));
            } else {
                run.push(s);
            }
        }
        if !run.is_empty() {
            let region = self.next();
            out.push(Node::Threads { region, stmts: run });
        }
        out
    }

    fn nested<'k>(&mut self, stmts: &'k [Stmt], level: Level) -> Vec<Node<'k>> {
        match level {
            Level::Block => self.block(stmts),
            Level::Warp => self.warp(stmts.iter().collect()),
        }
    }

    fn control<'k>(&mut self, s: &'k Stmt, level: Level) -> Node<'k> {
        let region = self.next();
        match s {
            Stmt::Barrier => Node::Barrier,
            Stmt::Collective { .. } => Node::Collectives {
                region,
                stmts: vec![s],
            },
            Stmt::For { body, .. } | Stmt::While { body, .. } | Stmt::Unroll { body, .. } => {
                Node::Control {
                    region,
                    level,
                    stmt: s,
                    body: self.nested(body, level),
                    otherwise: Vec::new(),
                }
            }
            Stmt::If {
                then, otherwise, ..
            } => Node::Control {
                region,
                level,
                stmt: s,
                body: self.nested(then, level),
                otherwise: self.nested(otherwise, level),
            },
            // Only statements that hold a barrier or collective reach here.
            other => unreachable!("not a synchronising statement: {other:?}"),
        }
    }
}

/// Whether `s` is a matrix multiply-accumulate or a matrix load (each runs
/// alone, over scratch of its own).
pub(crate) fn is_mma(s: &Stmt) -> bool {
    matches!(
        s,
        Stmt::Collective {
            op: crate::ir::Collective::Mma { .. } | crate::ir::Collective::LoadMatrix { .. },
            ..
        }
    )
}

/// Whether collective `s` reads none of the results of `batch`.
fn independent(batch: &[&Stmt], s: &Stmt) -> bool {
    let dsts: Vec<VarId> = batch
        .iter()
        .filter_map(|b| match b {
            Stmt::Collective { dst, .. } => Some(*dst),
            _ => None,
        })
        .collect();
    let own = match s {
        Stmt::Collective { dst, .. } => Some(*dst),
        _ => None,
    };
    let mut reads = Vec::new();
    s.for_each_var(&mut |v| reads.push(v));
    !reads.iter().any(|v| Some(*v) != own && dsts.contains(v))
}

/// The largest batch of collectives in a schedule.
pub(crate) fn max_batch(nodes: &[Node<'_>]) -> usize {
    nodes
        .iter()
        .map(|n| match n {
            Node::Collectives { stmts, .. } => stmts.len(),
            Node::Warps(inner) => max_batch(inner),
            Node::Control {
                body, otherwise, ..
            } => max_batch(body).max(max_batch(otherwise)),
            Node::Threads { .. } | Node::Barrier => 0,
        })
        .max()
        .unwrap_or(0)
}

/// The buffers a statement (and its body) loads or stores.
fn stmt_bufs(s: &Stmt, f: &mut impl FnMut(BufId)) {
    fn expr(e: &Expr, f: &mut impl FnMut(BufId)) {
        match e {
            Expr::Load { buf, index, .. } => {
                f(*buf);
                expr(index, f);
            }
            Expr::Lit(_) | Expr::Var(_) | Expr::Special(_) => {}
            Expr::Unary(_, a) | Expr::Cast(_, a) | Expr::Lane(a, _) => expr(a, f),
            Expr::Binary(_, a, b) | Expr::Cmp(_, a, b) => {
                expr(a, f);
                expr(b, f);
            }
            Expr::Select(c, a, b) => {
                expr(c, f);
                expr(a, f);
                expr(b, f);
            }
            Expr::Math(_, xs) | Expr::Vector(xs) => xs.iter().for_each(|x| expr(x, f)),
        }
    }
    match s {
        Stmt::Let(_, x) | Stmt::Assign(_, x) => expr(x, f),
        Stmt::Store { buf, index, value } => {
            f(*buf);
            expr(index, f);
            expr(value, f);
        }
        Stmt::For {
            start,
            end,
            step,
            body,
            ..
        } => {
            for x in [start, end, step] {
                expr(x, f);
            }
            body.iter().for_each(|s| stmt_bufs(s, f));
        }
        Stmt::If {
            cond,
            then,
            otherwise,
        } => {
            expr(cond, f);
            then.iter().chain(otherwise).for_each(|s| stmt_bufs(s, f));
        }
        Stmt::While { cond, body } => {
            expr(cond, f);
            body.iter().for_each(|s| stmt_bufs(s, f));
        }
        Stmt::Unroll { body, .. } => body.iter().for_each(|s| stmt_bufs(s, f)),
        Stmt::Collective { op, value, .. } => {
            expr(value, f);
            for a in op.operands() {
                expr(a, f);
            }
            if let crate::ir::Collective::LoadMatrix { buf, .. } = op {
                f(*buf);
            }
        }
        Stmt::Prefetch { buf, index } => {
            f(*buf);
            expr(index, f);
        }
        Stmt::Barrier | Stmt::Comment(_) => {}
    }
}

/// The regions that mention each buffer (what matters is whether a local
/// array lives in one region only).
pub(crate) fn buf_regions(nodes: &[Node<'_>], nbufs: usize) -> Vec<Vec<usize>> {
    fn mark(out: &mut [Vec<usize>], b: BufId, r: usize) {
        if let Some(list) = out.get_mut(b.0 as usize) {
            if !list.contains(&r) {
                list.push(r);
            }
        }
    }
    fn walk(nodes: &[Node<'_>], out: &mut [Vec<usize>]) {
        for n in nodes {
            match n {
                Node::Threads { region, stmts } | Node::Collectives { region, stmts } => {
                    for s in stmts {
                        stmt_bufs(s, &mut |b| mark(out, b, *region));
                    }
                }
                Node::Warps(inner) => walk(inner, out),
                Node::Barrier => {}
                Node::Control {
                    region,
                    stmt,
                    body,
                    otherwise,
                    ..
                } => {
                    // The control statement's own expressions (not its body).
                    let own = match stmt {
                        Stmt::For {
                            var,
                            start,
                            end,
                            step,
                            ..
                        } => Stmt::For {
                            var: *var,
                            start: start.clone(),
                            end: end.clone(),
                            step: step.clone(),
                            body: Vec::new(),
                        },
                        Stmt::If { cond, .. } | Stmt::While { cond, .. } => Stmt::While {
                            cond: cond.clone(),
                            body: Vec::new(),
                        },
                        _ => Stmt::Barrier,
                    };
                    stmt_bufs(&own, &mut |b| mark(out, b, *region));
                    walk(body, out);
                    walk(otherwise, out);
                }
            }
        }
    }
    let mut out = vec![Vec::new(); nbufs];
    walk(nodes, &mut out);
    out
}

/// Records, for every variable, the regions that mention it, and which
/// variables are loop variables of uniform control loops.
pub(crate) fn var_regions(nodes: &[Node<'_>], nvars: usize) -> (Vec<Vec<usize>>, Vec<bool>) {
    let mut regions = vec![Vec::new(); nvars];
    let mut control_var = vec![false; nvars];
    fn mark(regions: &mut [Vec<usize>], v: VarId, r: usize) {
        let list = &mut regions[v.0 as usize];
        if !list.contains(&r) {
            list.push(r);
        }
    }
    fn walk(nodes: &[Node<'_>], regions: &mut [Vec<usize>], control_var: &mut [bool]) {
        for n in nodes {
            match n {
                Node::Threads { region, stmts } => {
                    for s in stmts {
                        s.for_each_var(&mut |v| mark(regions, v, *region));
                    }
                }
                Node::Warps(inner) => walk(inner, regions, control_var),
                Node::Collectives { region, stmts } => {
                    for s in stmts {
                        s.for_each_var(&mut |v| mark(regions, v, *region));
                    }
                }
                Node::Barrier => {}
                Node::Control {
                    region,
                    stmt,
                    body,
                    otherwise,
                    ..
                } => {
                    // The control statement's own expressions belong to its
                    // region; its body's statements to theirs.
                    match stmt {
                        Stmt::For {
                            var,
                            start,
                            end,
                            step,
                            ..
                        } => {
                            control_var[var.0 as usize] = true;
                            mark(regions, *var, *region);
                            for x in [start, end, step] {
                                x.for_each_var(&mut |v| mark(regions, v, *region));
                            }
                        }
                        Stmt::If { cond, .. } | Stmt::While { cond, .. } => {
                            cond.for_each_var(&mut |v| mark(regions, v, *region));
                        }
                        Stmt::Unroll { var, .. } => {
                            control_var[var.0 as usize] = true;
                            mark(regions, *var, *region);
                        }
                        _ => {}
                    }
                    walk(body, regions, control_var);
                    walk(otherwise, regions, control_var);
                }
            }
        }
    }
    walk(nodes, &mut regions, &mut control_var);
    (regions, control_var)
}
