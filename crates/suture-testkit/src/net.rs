//! A line-protocol client for test servers on loopback: send a request, read one reply line.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

/// One connection to `127.0.0.1:port` whose replies are lines.
pub struct LineClient {
    reader: BufReader<TcpStream>,
}

impl LineClient {
    /// Connects; every read waits at most [`crate::WAIT`].
    pub fn connect(port: u16) -> LineClient {
        let s = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("cannot connect to 127.0.0.1:{port}: {e}"));
        s.set_read_timeout(Some(crate::WAIT)).unwrap();
        LineClient {
            reader: BufReader::new(s),
        }
    }

    /// Sends `request` and returns the reply line (without its newline); fails when the
    /// server drops the connection instead of answering.
    pub fn ask(&mut self, request: &[u8]) -> String {
        self.reader.get_mut().write_all(request).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        assert!(
            line.ends_with('\n'),
            "the server dropped the connection: {line:?}"
        );
        line.trim_end().to_string()
    }
}
