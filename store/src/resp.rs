//! Redis wire helpers shared by the worker (tokio) and the server's cores
//! (monoio): URL parsing, command encoding, reply decoding. The I/O stays
//! with each runtime.

pub use redis_protocol::resp2::types::OwnedFrame as Frame;
use redis_protocol::resp2::types::Resp2Frame;

/// Why a Redis URL or reply is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("REDIS_URL: {0}")]
    Url(String),
    #[error("Redis protocol: {0}")]
    Protocol(String),
}

/// `redis://host[:port][/db]` -> (`host:port`, db).
pub fn parse_url(url: &str) -> Result<(String, u32), RespError> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| RespError::Url(format!("must start with redis://, got {url}")))?;
    let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err(RespError::Url("credentials are not supported yet".into()));
    }
    let authority = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:6379")
    };
    let db = if db.is_empty() {
        0
    } else {
        db.parse()
            .map_err(|_| RespError::Url(format!("database must be a number: {db}")))?
    };
    Ok((authority, db))
}

/// Encode a command as a RESP2 array of bulk strings.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let frame = Frame::Array(args.iter().map(|a| Frame::BulkString(a.to_vec())).collect());
    let mut buf = vec![0u8; frame.encode_len(false)];
    let n = redis_protocol::resp2::encode::encode(&mut buf, &frame, false)
        .expect("buffer sized by encode_len");
    buf.truncate(n);
    buf
}

/// Take one complete frame off the front of `buf`, if there is one.
pub fn take_frame(buf: &mut Vec<u8>) -> Result<Option<Frame>, RespError> {
    match redis_protocol::resp2::decode::decode(buf) {
        Ok(Some((frame, used))) => {
            buf.drain(..used);
            Ok(Some(frame))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(RespError::Protocol(format!("{e:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("redis://127.0.0.1:7000/").unwrap(),
            ("127.0.0.1:7000".into(), 0)
        );
        assert_eq!(parse_url("redis://h/3").unwrap(), ("h:6379".into(), 3));
        assert!(parse_url("http://h").is_err());
    }

    #[test]
    fn commands_and_replies() {
        assert_eq!(command(&[b"GET", b"k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        let mut buf = b"+OK\r\n:5\r\n$2\r\nab".to_vec();
        assert_eq!(
            take_frame(&mut buf).unwrap(),
            Some(Frame::SimpleString(b"OK".to_vec()))
        );
        assert_eq!(take_frame(&mut buf).unwrap(), Some(Frame::Integer(5)));
        assert_eq!(take_frame(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"\r\n");
        assert_eq!(
            take_frame(&mut buf).unwrap(),
            Some(Frame::BulkString(b"ab".to_vec()))
        );
    }
}
