//! Test and lab harness of hybridgw's end-to-end tests: strongSwan peers (RFC 7296 IKEv2, RFC 4303
//! ESP over RFC 3948 UDP encapsulation) in network namespaces, packet captures decrypted by tshark,
//! iperf3 and ping, and the location of the `hybridgw` binary.
//!
//! ```no_run
//! use harness::{netns::topology::Lab, charon::{Charon, CharonOptions}, swanctl::SwanConn};
//! # fn main() -> anyhow::Result<()> {
//! let lab = Lab::builder().prefix("demo").build()?;
//! let a = Charon::start(&lab.onprem_gw, CharonOptions::default())?;
//! let b = Charon::start(&lab.azure_gw, CharonOptions::default())?;
//! let conn = SwanConn::new("gw", lab.onprem_gw_wan_ip.into(), lab.azure_gw_wan_ip.into(), "secret-psk-123")
//!     .ts(&["198.18.1.0/24"], &["198.19.1.0/24"]);
//! b.load(&conn.mirrored().render()?)?;
//! a.load(&conn.render()?)?;
//! a.initiate(&conn.child)?;
//! let stats = harness::traffic::ping(&lab.onprem_host, lab.azure_host_ip, 3, std::time::Duration::from_millis(200))?;
//! println!("{stats:?} {:?}", a.list_sas()?);
//! # Ok(()) }
//! ```

pub use netns;

pub mod bin;
pub mod capture;
pub mod charon;
pub mod keys;
pub mod reorder;
pub mod sas;
pub mod swanctl;
pub mod traffic;

pub use bin::hybridgw_bin;
pub use capture::{Capture, Tshark};
pub use charon::{Charon, CharonOptions, Routing};
pub use keys::{EspSaKeys, IkeSaKeys, Secret};
pub use sas::{ChildSa, IkeSa};
pub use swanctl::SwanConn;
pub use traffic::{Iperf3Options, Iperf3Result, Iperf3Server, PingStats, iperf3_client, ping};
