//! The replication factor, a count with invariants of its own.

use crate::error::RingError;

/// The largest replication factor a ring answers for. The ring precomputes
/// every position's preference list this deep so a lookup is a binary search
/// and a slice, with no walk and no allocation; each extra level costs 4
/// bytes per ring token. Dynamo-style clusters use 3, sometimes 5.
pub const MAX_RF: usize = 8;

/// How many distinct nodes hold each key, `1..=MAX_RF`.
///
/// A ring with fewer nodes than the factor places each key on every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicationFactor(usize);

impl ReplicationFactor {
    /// One replica: plain ownership.
    pub const ONE: Self = Self(1);

    /// The factor `rf`.
    ///
    /// # Errors
    /// [`RingError::InvalidReplicationFactor`] when `rf` is 0 or above [`MAX_RF`].
    pub fn new(rf: usize) -> Result<Self, RingError> {
        if (1..=MAX_RF).contains(&rf) {
            Ok(Self(rf))
        } else {
            Err(RingError::InvalidReplicationFactor { rf })
        }
    }

    /// The factor as a count.
    pub fn get(self) -> usize {
        self.0
    }
}

impl TryFrom<usize> for ReplicationFactor {
    type Error = RingError;

    fn try_from(rf: usize) -> Result<Self, RingError> {
        Self::new(rf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_zero_and_too_deep() {
        assert_eq!(
            ReplicationFactor::new(0),
            Err(RingError::InvalidReplicationFactor { rf: 0 })
        );
        assert!(ReplicationFactor::new(MAX_RF + 1).is_err());
        assert_eq!(
            ReplicationFactor::new(MAX_RF).map(|rf| rf.get()),
            Ok(MAX_RF)
        );
        assert_eq!(ReplicationFactor::ONE.get(), 1);
    }
}
