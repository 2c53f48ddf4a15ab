//! The causal graph a hypothesis carries (`system.md`, "Causal graph"): the
//! treatment, the outcome and the suspected confounders as a DAG (petgraph),
//! checked for cycles, with the arrows that randomisation cuts marked, and
//! laid out in layers for drawing (`web::charts::causal_graph` draws it).
//!
//! A randomised treatment is identified by design: the coin, not the
//! confounders, decides the arm, so every arrow into the treatment is cut.
//! The graph is still worth drawing: it says what else moves the outcome
//! (and so what makes the series noisy). Covariates to adjust for are
//! checked with the back-door criterion (Pearl 2009, §3.3.1) on the graph
//! as everyday life has it (arrows into the treatment kept): none may be a
//! descendant of the treatment (a mediator), and together they must
//! d-separate treatment and outcome once the treatment's own arrows are
//! removed. [`NamedGraph`] checks a proposer's graph before it becomes a
//! protocol: acyclic, and a directed path from treatment to outcome.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::Direction as EdgeDirection;
use petgraph::algo::{has_path_connecting, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::trial::protocol::Protocol;

/// What a node stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// The random allocation (the schedule's seed).
    Randomisation,
    /// The arms.
    Treatment,
    /// The primary outcome.
    Outcome,
    /// A suspected other cause.
    Confounder,
    /// A suspected step between treatment and outcome.
    Mediator,
}

/// What an arrow means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    /// A suspected causal effect.
    Causal,
    /// The randomisation sets the treatment.
    Assigns,
    /// An arrow into the treatment that exists in everyday life and that
    /// randomisation cuts during the trial.
    CutByRandomisation,
}

/// Why a hypothesis's graph is not a usable DAG.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CausalError {
    /// An edge names a node that is not in the graph.
    #[error("edge [{0:?}, {1:?}]: {2:?} is not \"treatment\", \"outcome\" or a listed confounder")]
    UnknownNode(String, String, String),
    /// The graph has a cycle.
    #[error("the causal graph has a cycle through {0:?}; a cause cannot be its own effect")]
    Cycle(String),
    /// A confounder is named twice or uses a reserved name.
    #[error("confounder {0:?} is listed twice or uses a reserved name")]
    BadConfounder(String),
    /// No directed path leads from the treatment to the outcome.
    #[error(
        "the causal graph has no directed path from the treatment to the outcome: it does not say how the treatment could work"
    )]
    NoPath,
    /// A covariate to adjust for breaks the back-door criterion.
    #[error("adjusting for {0:?}: {1}")]
    BadAdjustment(String, String),
}

/// A hypothesis's DAG.
#[derive(Debug, Clone)]
pub struct CausalGraph {
    graph: DiGraph<(String, NodeRole), EdgeKind>,
}

impl CausalGraph {
    /// Builds and checks the graph of `protocol`'s hypothesis (a bare
    /// treatment → outcome graph when it has none).
    pub fn of(protocol: &Protocol) -> Result<Self, CausalError> {
        let mut graph = DiGraph::new();
        let random = graph.add_node(("randomisation".to_string(), NodeRole::Randomisation));
        let arms: Vec<&str> = protocol.arms.iter().map(|a| a.key.as_str()).collect();
        let treatment = graph.add_node((arms.join(" / "), NodeRole::Treatment));
        let outcome = graph.add_node((protocol.outcome.stream.clone(), NodeRole::Outcome));
        graph.add_edge(random, treatment, EdgeKind::Assigns);
        graph.add_edge(treatment, outcome, EdgeKind::Causal);
        let mut names: Vec<(String, NodeIndex)> = vec![
            ("treatment".into(), treatment),
            ("outcome".into(), outcome),
            ("randomisation".into(), random),
        ];
        let Some(h) = &protocol.hypothesis else {
            return Ok(CausalGraph { graph });
        };
        for c in &h.confounders {
            let c = c.trim();
            if c.is_empty() || names.iter().any(|(n, _)| n == c) {
                return Err(CausalError::BadConfounder(c.to_string()));
            }
            let node = graph.add_node((c.to_string(), NodeRole::Confounder));
            graph.add_edge(node, outcome, EdgeKind::Causal);
            graph.add_edge(node, treatment, EdgeKind::CutByRandomisation);
            names.push((c.to_string(), node));
        }
        for m in &h.mediators {
            let m = m.trim();
            if m.is_empty() || names.iter().any(|(n, _)| n == m) {
                return Err(CausalError::BadConfounder(m.to_string()));
            }
            let node = graph.add_node((m.to_string(), NodeRole::Mediator));
            names.push((m.to_string(), node));
        }
        for [from, to] in &h.edges {
            let find = |name: &str| names.iter().find(|(n, _)| n == name.trim()).map(|x| x.1);
            let (Some(a), Some(b)) = (find(from), find(to)) else {
                let bad = if find(from).is_none() { from } else { to };
                return Err(CausalError::UnknownNode(
                    from.clone(),
                    to.clone(),
                    bad.clone(),
                ));
            };
            if graph.find_edge(a, b).is_some() {
                continue;
            }
            let kind = if b == treatment {
                EdgeKind::CutByRandomisation
            } else {
                EdgeKind::Causal
            };
            graph.add_edge(a, b, kind);
        }
        if let Err(cycle) = toposort(&graph, None) {
            return Err(CausalError::Cycle(graph[cycle.node_id()].0.clone()));
        }
        let edges: Vec<[String; 2]> = graph
            .edge_references()
            .filter(|e| *e.weight() != EdgeKind::Assigns)
            .map(|e| {
                let name = |n: NodeIndex| match graph[n].1 {
                    NodeRole::Treatment => "treatment".to_string(),
                    NodeRole::Outcome => "outcome".to_string(),
                    _ => graph[n].0.clone(),
                };
                [name(e.source()), name(e.target())]
            })
            .collect();
        let named = NamedGraph::from_edges(&edges)?;
        if !named.has_path("treatment", "outcome") {
            return Err(CausalError::NoPath);
        }
        if let Some((z, why)) = named
            .adjustment_problems("treatment", "outcome", &h.adjust_for, true)
            .into_iter()
            .next()
        {
            return Err(CausalError::BadAdjustment(z, why));
        }
        Ok(CausalGraph { graph })
    }

    /// Number of nodes, the randomisation included.
    pub fn node_count(&self) -> usize {
        self.graph.node_count()
    }

    /// Number of arrows of one kind.
    pub fn edge_count(&self, kind: EdgeKind) -> usize {
        self.graph
            .edge_references()
            .filter(|e| *e.weight() == kind)
            .count()
    }

    /// The nodes in index order: name and role.
    pub fn nodes(&self) -> Vec<(&str, NodeRole)> {
        self.graph
            .node_indices()
            .map(|n| (self.graph[n].0.as_str(), self.graph[n].1))
            .collect()
    }

    /// The arrows: from, to (node indices) and kind.
    pub fn edges(&self) -> Vec<(usize, usize, EdgeKind)> {
        self.graph
            .edge_references()
            .map(|e| (e.source().index(), e.target().index(), *e.weight()))
            .collect()
    }

    /// Each node's layer for drawing: the longest path from the
    /// randomisation over arrows that are not cut; confounders sit on the
    /// top row beside the randomisation.
    pub fn layers(&self) -> Vec<usize> {
        let order = toposort(&self.graph, None).unwrap_or_default();
        let mut layer = vec![0usize; self.graph.node_count()];
        for &n in &order {
            for e in self.graph.edges(n) {
                if *e.weight() != EdgeKind::CutByRandomisation {
                    layer[e.target().index()] = layer[e.target().index()].max(layer[n.index()] + 1);
                }
            }
        }
        for n in self.graph.node_indices() {
            if self.graph[n].1 == NodeRole::Confounder {
                layer[n.index()] = 0;
            }
        }
        layer
    }

    /// The graph in words, for the chart's text alternative.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for e in self.graph.edge_references() {
            let (a, b) = (&self.graph[e.source()].0, &self.graph[e.target()].0);
            parts.push(match e.weight() {
                EdgeKind::CutByRandomisation => {
                    format!("{a} would affect {b}, but randomisation cuts that")
                }
                EdgeKind::Assigns => format!("{a} sets {b}"),
                EdgeKind::Causal => format!("{a} affects {b}"),
            });
        }
        parts.join("; ")
    }
}

/// A graph given as named arrows `[from, to]`, as a proposer writes it
/// (`"treatment"` and `"outcome"` name those nodes).
#[derive(Debug, Clone)]
pub struct NamedGraph {
    graph: DiGraph<String, ()>,
    index: BTreeMap<String, NodeIndex>,
}

impl NamedGraph {
    /// Builds the graph; refuses a cycle (a cause cannot be its own effect).
    pub fn from_edges(edges: &[[String; 2]]) -> Result<Self, CausalError> {
        let mut g = NamedGraph {
            graph: DiGraph::new(),
            index: BTreeMap::new(),
        };
        for [from, to] in edges {
            let (a, b) = (g.node(from.trim()), g.node(to.trim()));
            if g.graph.find_edge(a, b).is_none() {
                g.graph.add_edge(a, b, ());
            }
        }
        if let Err(cycle) = toposort(&g.graph, None) {
            return Err(CausalError::Cycle(g.graph[cycle.node_id()].clone()));
        }
        Ok(g)
    }

    fn node(&mut self, name: &str) -> NodeIndex {
        if let Some(&n) = self.index.get(name) {
            return n;
        }
        let n = self.graph.add_node(name.to_string());
        self.index.insert(name.to_string(), n);
        n
    }

    /// The node names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Whether a directed path leads from `from` to `to`.
    pub fn has_path(&self, from: &str, to: &str) -> bool {
        match (self.index.get(from), self.index.get(to)) {
            (Some(&a), Some(&b)) => a != b && has_path_connecting(&self.graph, a, b, None),
            _ => false,
        }
    }

    /// Nodes reachable from `start` along (`Outgoing`) or against
    /// (`Incoming`) the arrows, `start` excluded.
    fn reach(&self, start: NodeIndex, dir: EdgeDirection) -> BTreeSet<NodeIndex> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![start];
        while let Some(n) = stack.pop() {
            for m in self.graph.neighbors_directed(n, dir) {
                if seen.insert(m) {
                    stack.push(m);
                }
            }
        }
        seen
    }

    /// The mediators of `treatment` on `outcome`: nodes on a directed path
    /// between them.
    pub fn mediators(&self, treatment: &str, outcome: &str) -> Vec<String> {
        let (Some(&t), Some(&y)) = (self.index.get(treatment), self.index.get(outcome)) else {
            return Vec::new();
        };
        let down = self.reach(t, EdgeDirection::Outgoing);
        let up = self.reach(y, EdgeDirection::Incoming);
        down.intersection(&up)
            .map(|&n| self.graph[n].clone())
            .collect()
    }

    /// Whether `x` and `y` are d-separated given `z` in the graph without
    /// the arrows out of `x` (the back-door graph), and without those into
    /// `x` too when it is `randomised`: the moral graph of the ancestral set
    /// of {x, y} ∪ z, with z removed, leaves x and y apart (Lauritzen et
    /// al. 1990).
    fn backdoor_separated(
        &self,
        x: NodeIndex,
        y: NodeIndex,
        z: &BTreeSet<NodeIndex>,
        randomised: bool,
    ) -> bool {
        // The parents of n in the back-door graph.
        let parents = |n: NodeIndex| {
            self.graph
                .neighbors_directed(n, EdgeDirection::Incoming)
                .filter(move |&p| p != x && !(randomised && n == x))
        };
        let mut keep: BTreeSet<NodeIndex> = z.iter().copied().chain([x, y]).collect();
        let mut stack: Vec<NodeIndex> = keep.iter().copied().collect();
        while let Some(n) = stack.pop() {
            for p in parents(n) {
                if keep.insert(p) {
                    stack.push(p);
                }
            }
        }
        let mut moral: BTreeMap<NodeIndex, BTreeSet<NodeIndex>> = BTreeMap::new();
        let mut link = |a: NodeIndex, b: NodeIndex| {
            moral.entry(a).or_default().insert(b);
            moral.entry(b).or_default().insert(a);
        };
        for &n in &keep {
            let ps: Vec<NodeIndex> = parents(n).collect();
            for (i, &p) in ps.iter().enumerate() {
                link(p, n);
                for &q in &ps[i + 1..] {
                    link(p, q);
                }
            }
        }
        let mut seen = BTreeSet::from([x]);
        let mut stack = vec![x];
        while let Some(n) = stack.pop() {
            if n == y {
                return false;
            }
            for &m in moral.get(&n).into_iter().flatten() {
                if !z.contains(&m) && seen.insert(m) {
                    stack.push(m);
                }
            }
        }
        true
    }

    /// What is wrong with adjusting for `adjust` when estimating the effect
    /// of `treatment` on `outcome` (the back-door criterion, Pearl 2009
    /// §3.3.1), one `(covariate, reason)` per problem; empty when the set
    /// is valid. A covariate not in the graph, one below the treatment (a
    /// mediator or another descendant) and a set that leaves a back-door
    /// path open are each a problem.
    ///
    /// With `randomised`, the arrows into the treatment are cut (the coin
    /// sets it), so every back-door path is closed and only descendants
    /// are a problem; without it the graph is everyday life's.
    pub fn adjustment_problems(
        &self,
        treatment: &str,
        outcome: &str,
        adjust: &[String],
        randomised: bool,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let (Some(&t), Some(&y)) = (self.index.get(treatment), self.index.get(outcome)) else {
            return out;
        };
        let below = self.reach(t, EdgeDirection::Outgoing);
        let mut z = BTreeSet::new();
        for name in adjust {
            match self.index.get(name.trim()) {
                None => out.push((name.clone(), "it is not a node of the causal graph".into())),
                Some(&n) if n == t || n == y => {
                    out.push((name.clone(), "the treatment and the outcome are not covariates".into()))
                }
                Some(n) if below.contains(n) => out.push((
                    name.clone(),
                    if self.has_path(name.trim(), outcome) {
                        "it is a mediator (the treatment acts through it): adjusting would remove part of the effect".into()
                    } else {
                        "it is an effect of the treatment: adjusting for it can bias the estimate".into()
                    },
                )),
                Some(&n) => {
                    z.insert(n);
                }
            }
        }
        if out.is_empty() && !self.backdoor_separated(t, y, &z, randomised) {
            out.push((
                adjust.join(", "),
                "it leaves a back-door path between treatment and outcome open (a collider, or a confounder not in the set); randomisation still identifies the effect without adjusting".into(),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protocol_with(hypothesis: &str) -> Protocol {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/protocols/caffeine-cutoff.toml"
        ))
        .expect("shipped protocol");
        let mut value: toml::Table = toml::from_str(&text).expect("toml");
        value.remove("hypothesis");
        let mut p: Protocol = toml::from_str(&toml::to_string(&value).expect("toml"))
            .expect("shipped protocol parses");
        p.hypothesis = toml::from_str::<toml::Table>(hypothesis)
            .ok()
            .and_then(|t| t.get("hypothesis").cloned())
            .map(|h| h.try_into().expect("hypothesis"));
        p
    }

    #[test]
    fn confounders_are_cut_from_the_treatment_and_identified() {
        let p = protocol_with(
            "[hypothesis]\nrationale = \"r\"\nconfounders = [\"stress\", \"exercise\"]\nedges = [[\"stress\", \"exercise\"]]\n",
        );
        let g = CausalGraph::of(&p).expect("a DAG");
        assert_eq!(g.node_count(), 5);
        assert_eq!(g.edge_count(EdgeKind::CutByRandomisation), 2);
        assert_eq!(g.edge_count(EdgeKind::Assigns), 1);
        assert_eq!(g.layers().iter().filter(|&&l| l == 0).count(), 3);
        assert!(g.describe().contains("stress would affect"));
    }

    #[test]
    fn cycles_and_unknown_nodes_are_refused() {
        let p = protocol_with(
            "[hypothesis]\nrationale = \"r\"\nconfounders = [\"stress\"]\nedges = [[\"outcome\", \"stress\"]]\n",
        );
        assert!(matches!(CausalGraph::of(&p), Err(CausalError::Cycle(_))));
        let p =
            protocol_with("[hypothesis]\nrationale = \"r\"\nedges = [[\"moon\", \"outcome\"]]\n");
        assert!(matches!(
            CausalGraph::of(&p),
            Err(CausalError::UnknownNode(..))
        ));
        let p = protocol_with("[hypothesis]\nrationale = \"r\"\nconfounders = [\"outcome\"]\n");
        assert!(matches!(
            CausalGraph::of(&p),
            Err(CausalError::BadConfounder(_))
        ));
    }

    fn named(edges: &[(&str, &str)]) -> NamedGraph {
        let edges: Vec<[String; 2]> = edges
            .iter()
            .map(|(a, b)| [a.to_string(), b.to_string()])
            .collect();
        NamedGraph::from_edges(&edges).expect("a DAG")
    }

    fn set(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_proposers_graph_needs_a_path_and_no_cycle() {
        let g = named(&[("treatment", "sleep"), ("sleep", "outcome")]);
        assert!(g.has_path("treatment", "outcome"));
        assert!(!g.has_path("outcome", "treatment"));
        assert_eq!(g.mediators("treatment", "outcome"), set(&["sleep"]));
        let g = named(&[("stress", "treatment"), ("stress", "outcome")]);
        assert!(!g.has_path("treatment", "outcome"));
        let cyclic: Vec<[String; 2]> = vec![
            ["treatment".into(), "outcome".into()],
            ["outcome".into(), "treatment".into()],
        ];
        assert!(matches!(
            NamedGraph::from_edges(&cyclic),
            Err(CausalError::Cycle(_))
        ));
    }

    #[test]
    fn back_door_sets_follow_the_textbook_cases() {
        // A confounder: the empty set leaves the back door open in everyday
        // life, adjusting for it closes it; randomisation closes it anyway.
        let g = named(&[
            ("stress", "treatment"),
            ("stress", "outcome"),
            ("treatment", "outcome"),
        ]);
        assert!(
            !g.adjustment_problems("treatment", "outcome", &[], false)
                .is_empty()
        );
        assert!(
            g.adjustment_problems("treatment", "outcome", &set(&["stress"]), false)
                .is_empty()
        );
        assert!(
            g.adjustment_problems("treatment", "outcome", &[], true)
                .is_empty()
        );
        // M-bias: adjusting for the collider m opens a -> m <- b.
        let g = named(&[
            ("a", "treatment"),
            ("a", "m"),
            ("b", "m"),
            ("b", "outcome"),
            ("treatment", "outcome"),
        ]);
        assert!(
            g.adjustment_problems("treatment", "outcome", &[], false)
                .is_empty()
        );
        assert_eq!(
            g.adjustment_problems("treatment", "outcome", &set(&["m"]), false)
                .len(),
            1
        );
        assert!(
            g.adjustment_problems("treatment", "outcome", &set(&["m", "a"]), false)
                .is_empty()
        );
        assert!(
            g.adjustment_problems("treatment", "outcome", &set(&["m"]), true)
                .is_empty()
        );
        // A mediator is never adjusted for, randomised or not.
        let g = named(&[
            ("treatment", "sleep"),
            ("sleep", "outcome"),
            ("treatment", "outcome"),
        ]);
        for randomised in [false, true] {
            let p = g.adjustment_problems("treatment", "outcome", &set(&["sleep"]), randomised);
            assert!(p[0].1.contains("mediator"), "{p:?}");
        }
        let p = g.adjustment_problems("treatment", "outcome", &set(&["moon"]), true);
        assert!(p[0].1.contains("not a node"));
    }

    #[test]
    fn a_protocol_refuses_to_adjust_for_its_mediator() {
        let p = protocol_with(
            "[hypothesis]\nrationale = \"r\"\nconfounders = [\"stress\"]\nmediators = [\"sleep\"]\nedges = [[\"treatment\", \"sleep\"], [\"sleep\", \"outcome\"]]\nadjust_for = [\"sleep\"]\n",
        );
        assert!(matches!(
            CausalGraph::of(&p),
            Err(CausalError::BadAdjustment(..))
        ));
        let p = protocol_with(
            "[hypothesis]\nrationale = \"r\"\nconfounders = [\"stress\"]\nmediators = [\"sleep\"]\nedges = [[\"treatment\", \"sleep\"], [\"sleep\", \"outcome\"]]\nadjust_for = [\"stress\"]\n",
        );
        let g = CausalGraph::of(&p).expect("stress is a valid covariate");
        assert!(
            g.nodes()
                .iter()
                .any(|(n, r)| *n == "sleep" && *r == NodeRole::Mediator)
        );
    }
}
