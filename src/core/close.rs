//! Why a connection ends, and what each transport says about it.

/// The reason a session is closed by the server (or ended by the client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Close {
    /// The process is shutting down; the client should reconnect elsewhere
    /// with its cursor.
    Shutdown = 1,
    /// The outbox overflowed: the client reads slower than messages arrive.
    /// It resumes from its cursor and loses nothing.
    Slow = 2,
    /// No frame from the client within the heartbeat timeout.
    Silent = 3,
    /// A frame or message over the size limit.
    TooLarge = 4,
    /// A request the connection cannot go on from (bad query at connect).
    Policy = 5,
    /// The client closed or the socket failed.
    Client = 6,
    /// The engine became unusable for this session.
    Unavailable = 7,
    /// No valid credential at connect.
    Unauthenticated = 8,
    /// The credential does not allow what the connect asked for, or the
    /// origin is not allowed.
    Forbidden = 9,
    /// The token's `exp` passed without a `refresh`.
    TokenExpired = 10,
    /// Over an abuse limit.
    RateLimited = 11,
    /// Disconnected by an operator (`POST /v1/admin/connections/{id}/close`).
    Kicked = 12,
}

impl Close {
    /// Decodes the `u8` form stored in atomics.
    pub fn from_u8(v: u8) -> Option<Close> {
        Some(match v {
            1 => Close::Shutdown,
            2 => Close::Slow,
            3 => Close::Silent,
            4 => Close::TooLarge,
            5 => Close::Policy,
            6 => Close::Client,
            7 => Close::Unavailable,
            8 => Close::Unauthenticated,
            9 => Close::Forbidden,
            10 => Close::TokenExpired,
            11 => Close::RateLimited,
            12 => Close::Kicked,
            _ => return None,
        })
    }

    /// The WebSocket close code (contract §4).
    pub fn ws_code(self) -> u16 {
        match self {
            Close::Shutdown | Close::Silent => 1001,
            Close::Slow | Close::Unavailable | Close::RateLimited => 1013,
            Close::TooLarge => 1009,
            Close::Policy
            | Close::Unauthenticated
            | Close::Forbidden
            | Close::TokenExpired
            | Close::Kicked => 1008,
            Close::Client => 1000,
        }
    }

    /// A short, stable label for logs, metrics and close reasons.
    pub fn label(self) -> &'static str {
        match self {
            Close::Shutdown => "shutdown",
            Close::Slow => "slow_consumer",
            Close::Silent => "heartbeat_timeout",
            Close::TooLarge => "too_large",
            Close::Policy => "policy",
            Close::Client => "client",
            Close::Unavailable => "unavailable",
            Close::Unauthenticated => "unauthenticated",
            Close::Forbidden => "forbidden",
            Close::TokenExpired => "token_expired",
            Close::RateLimited => "rate_limited",
            Close::Kicked => "kicked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_and_kicked_is_a_policy_close() {
        for v in 1..=12u8 {
            let reason = Close::from_u8(v).expect("a reason");
            assert_eq!(reason as u8, v);
        }
        assert_eq!(Close::from_u8(13), None);
        assert_eq!((Close::Kicked.ws_code(), Close::Kicked.label()), (1008, "kicked"));
    }
}
