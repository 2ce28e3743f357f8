//! An instance's `/metrics`, scraped and read by name.

use std::collections::HashMap;

use anyhow::Result;

pub(super) struct Scrape {
    values: HashMap<String, f64>,
}

impl Scrape {
    pub(super) async fn get(client: &reqwest::Client, base: &str) -> Result<Self> {
        let text = client
            .get(format!("{base}/metrics"))
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Self::parse(&text))
    }

    /// Samples by name (labels included as written), comments skipped.
    pub(super) fn parse(text: &str) -> Self {
        let values = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect();
        Self { values }
    }

    /// The value of an unlabelled metric; 0 when absent.
    pub(super) fn value(&self, name: &str) -> f64 {
        self.values.get(name).copied().unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_by_name() {
        let s = Scrape::parse(
            "# HELP a A.\n# TYPE a gauge\na 3\nb_total{route=\"GET /me\"} 7\nc 1.5e3\n",
        );
        assert_eq!(s.value("a"), 3.0);
        assert_eq!(s.value("c"), 1500.0);
        assert_eq!(s.value("b_total{route=\"GET /me\"}"), 7.0);
        assert_eq!(s.value("missing"), 0.0);
    }
}
