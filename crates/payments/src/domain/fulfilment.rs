//! A vendor's steps after an order is paid: accepted → ready → completed, or rejected (the buyer
//! is refunded in full). Pure: no I/O.
use super::Status;

/// Where a paid order stands with its vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fulfilment {
    Accepted,
    Ready,
    Completed,
    Rejected,
}

impl Fulfilment {
    pub fn as_str(self) -> &'static str {
        match self {
            Fulfilment::Accepted => "accepted",
            Fulfilment::Ready => "ready",
            Fulfilment::Completed => "completed",
            Fulfilment::Rejected => "rejected",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Accepted, Self::Ready, Self::Completed, Self::Rejected]
            .into_iter()
            .find(|f| f.as_str() == text)
    }
}

/// A step the vendor takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Accept,
    Ready,
    Complete,
    Reject,
}

impl Step {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "accept" => Step::Accept,
            "ready" => Step::Ready,
            "complete" => Step::Complete,
            "reject" => Step::Reject,
            _ => return None,
        })
    }

    fn target(self) -> Fulfilment {
        match self {
            Step::Accept => Fulfilment::Accepted,
            Step::Ready => Fulfilment::Ready,
            Step::Complete => Fulfilment::Completed,
            Step::Reject => Fulfilment::Rejected,
        }
    }
}

/// Why a step cannot be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StepRefused {
    #[error("only a paid order is fulfilled")]
    NotPaid,
    #[error("this step does not follow where the order stands")]
    OutOfOrder,
}

/// The fulfilment after `step`, and whether it changed (taking the step the order is already at
/// is a no-op, so a retried request answers the same). A paid order starts with none.
pub fn next_fulfilment(status: Status, now: Option<Fulfilment>, step: Step) -> Result<(Fulfilment, bool), StepRefused> {
    let target = step.target();
    if now == Some(target) {
        return Ok((target, false));
    }
    if status != Status::Paid {
        return Err(StepRefused::NotPaid);
    }
    let allowed = matches!(
        (now, step),
        (None, Step::Accept)
            | (Some(Fulfilment::Accepted), Step::Ready)
            | (Some(Fulfilment::Ready), Step::Complete)
            | (None | Some(Fulfilment::Accepted), Step::Reject)
    );
    if allowed {
        Ok((target, true))
    } else {
        Err(StepRefused::OutOfOrder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paid_order_is_accepted_made_ready_and_completed_in_that_order() {
        let (f, changed) = next_fulfilment(Status::Paid, None, Step::Accept).unwrap();
        assert_eq!((f, changed), (Fulfilment::Accepted, true));
        let (f, _) = next_fulfilment(Status::Paid, Some(f), Step::Ready).unwrap();
        let (f, _) = next_fulfilment(Status::Paid, Some(f), Step::Complete).unwrap();
        assert_eq!(f, Fulfilment::Completed);
        assert_eq!(
            next_fulfilment(Status::Paid, Some(f), Step::Complete),
            Ok((Fulfilment::Completed, false)),
            "a repeated step is a no-op"
        );
        assert_eq!(
            next_fulfilment(Status::Paid, None, Step::Ready),
            Err(StepRefused::OutOfOrder)
        );
        assert_eq!(
            next_fulfilment(Status::Paid, Some(Fulfilment::Ready), Step::Reject),
            Err(StepRefused::OutOfOrder),
            "ready food is not rejected"
        );
    }

    #[test]
    fn only_a_paid_order_is_fulfilled_or_rejected() {
        for s in [Status::Pending, Status::Failed, Status::Expired, Status::Refunded] {
            assert_eq!(
                next_fulfilment(s, None, Step::Accept),
                Err(StepRefused::NotPaid),
                "{s:?}"
            );
        }
        assert_eq!(
            next_fulfilment(Status::Paid, Some(Fulfilment::Accepted), Step::Reject),
            Ok((Fulfilment::Rejected, true))
        );
        // Rejected and refunded: asking again answers the same.
        assert_eq!(
            next_fulfilment(Status::Refunded, Some(Fulfilment::Rejected), Step::Reject),
            Ok((Fulfilment::Rejected, false))
        );
        assert_eq!(Fulfilment::parse("ready"), Some(Fulfilment::Ready));
        assert_eq!(Step::parse("ship"), None);
    }
}
