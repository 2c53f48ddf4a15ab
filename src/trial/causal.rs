//! The causal graph a hypothesis carries (`system.md`, "Causal graph"): the
//! treatment, the outcome and the suspected confounders as a DAG (petgraph),
//! checked for cycles, with the arrows that randomisation cuts marked, and
//! laid out in layers for drawing (`web::charts::causal_graph` draws it).
//!
//! A randomised treatment is identified by design: the coin, not the
//! confounders, decides the arm, so every arrow into the treatment is cut.
//! The graph is still worth drawing: it says what else moves the outcome
//! (and so what makes the series noisy), and it is the seam where adjustment
//! sets will be computed once covariates enter the model.

use petgraph::algo::toposort;
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
}
