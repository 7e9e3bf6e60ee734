//! Word pools for names, descriptions and labels. A share of objects uses the non-ASCII pools
//! (accents, CJK, emoji) so every consumer is exercised on multi-byte UTF-8.

use std::sync::LazyLock;

use super::rng::{SplitMix, derive};
use super::write::json_str_body;

fn escaped(pool: &[&str]) -> Vec<Vec<u8>> {
    pool.iter()
        .map(|s| {
            let mut out = Vec::with_capacity(s.len() + 4);
            json_str_body(&mut out, s);
            out
        })
        .collect()
}

static SENTENCES_ESCAPED: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| escaped(SENTENCES));
static SENTENCES_INTL_ESCAPED: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| escaped(SENTENCES_INTL));

pub const ORGANIZATIONS: &[&str] = &[
    "ACME CERT",
    "Northwind Security",
    "Contoso SOC",
    "Globex Threat Intel",
    "Initech CSIRT",
    "Umbrella Research",
    "Stark Defense Labs",
    "Wayne Cyber Unit",
    "Tyrell Blue Team",
    "Cyberdyne DFIR",
];
pub const ORGANIZATIONS_INTL: &[&str] = &[
    "Agence Nationale de la Sécurité",
    "Bundesamt für Sicherheit – Lagezentrum",
    "日本サイバー防衛センター",
    "Équipe de réponse aux incidents",
    "Служба кибербезопасности",
    "中国国家应急中心",
    "Ciberseguridad Ñandú",
];
pub const MALWARE: &[&str] = &[
    "Emotet",
    "TrickBot",
    "Qakbot",
    "IcedID",
    "Cobalt Strike",
    "AsyncRAT",
    "Remcos",
    "AgentTesla",
    "LockBit",
    "BlackCat",
    "Raccoon Stealer",
    "RedLine",
    "Gootloader",
    "Bumblebee",
    "PlugX",
    "ShadowPad",
];
pub const MALWARE_INTL: &[&str] = &[
    "Zéro-Crédit",
    "Drachen🐉Loader",
    "影子木马",
    "Ночной Волк",
    "Kérberos-Ñ",
    "暗黑蜘蛛",
    "Fénix 🔥 RAT",
];
pub const REPORT_TOPICS: &[&str] = &[
    "resurgence",
    "campaign against EU banks",
    "infrastructure overlap",
    "new loader variant",
    "phishing wave",
    "initial access broker activity",
    "supply-chain intrusion",
    "C2 rotation",
];
pub const REPORT_TOPICS_INTL: &[&str] = &[
    "campagne contre les hôpitaux",
    "新たな攻撃キャンペーン",
    "Angriffswelle auf Behörden",
    "钓鱼活动分析",
    "📈 activité en hausse",
];
pub const ATTACK_PATTERNS: &[(&str, &str)] = &[
    ("T1059.001", "PowerShell"),
    ("T1566.001", "Spearphishing Attachment"),
    ("T1071.001", "Web Protocols"),
    ("T1105", "Ingress Tool Transfer"),
    ("T1027", "Obfuscated Files or Information"),
    ("T1055", "Process Injection"),
    ("T1547.001", "Registry Run Keys / Startup Folder"),
    ("T1003.001", "LSASS Memory"),
    ("T1486", "Data Encrypted for Impact"),
    ("T1021.002", "SMB/Windows Admin Shares"),
];
pub const SENTENCES: &[&str] = &[
    "Modular banking trojan turned loader, distributed through malspam campaigns with macro-enabled documents.",
    "The operators rotate their command and control infrastructure every few days and rely on compromised WordPress sites.",
    "Observed payloads include credential stealers, remote access tools and, in later stages, ransomware deployment.",
    "Initial access is obtained through phishing emails impersonating invoices, parcel notifications or HR documents.",
    "Network traffic uses HTTPS with self-signed certificates and a distinctive \"Accept-Language\" header ordering.",
    "Persistence is achieved through scheduled tasks and registry run keys pointing to a DLL in the user profile.",
    "Analysts assess with moderate confidence that the activity overlaps with a financially motivated cluster.",
    "The sample checks for sandbox artefacts, sleeps for several minutes and only then contacts its servers.",
    "Lateral movement relies on SMB, stolen credentials and legitimate remote administration tools.",
    "Indicators were shared by partner CERTs and validated against our own telemetry before publication.",
    "Victims were mostly in the manufacturing, healthcare and public administration sectors across Europe.",
    "The loader decrypts its configuration with RC4 using a key derived from the volume serial number.",
];
pub const SENTENCES_INTL: &[&str] = &[
    "Le cheval de Troie bancaire est distribué par des courriels piégés se faisant passer pour des factures.",
    "Die Angreifer nutzen kompromittierte Server in mehreren Ländern und wechseln ihre Infrastruktur häufig.",
    "このマルウェアはフィッシングメールを通じて配布され、認証情報を窃取します。",
    "该木马通过钓鱼邮件传播，并在受害者主机上建立持久化机制。",
    "Кампания нацелена на государственные учреждения и промышленные предприятия.",
    "⚠️ Activité détectée 🔥 sur plusieurs réseaux — niveau de confiance élevé ✅.",
    "La campaña utiliza documentos señuelo en español y servidores de mando en Latinoamérica.",
];
pub const LABELS: &[&str] = &[
    "c2",
    "emotet",
    "phishing",
    "ransomware",
    "apt",
    "botnet",
    "credential-theft",
    "loader",
    "banking",
    "initial-access",
    "exfiltration",
    "tlp-clear",
];
pub const LABELS_INTL: &[&str] = &[
    "银行木马",
    "hameçonnage",
    "🔥 hot",
    "フィッシング",
    "Überwachung",
];
pub const SECTORS: &[&str] = &[
    "finance",
    "healthcare",
    "government-national",
    "manufacturing",
    "energy",
];
pub const TLDS: &[&str] = &[
    "com", "net", "org", "info", "xyz", "ru", "cn", "top", "fr", "de",
];
pub const DOMAIN_WORDS: &[&str] = &[
    "update", "secure", "login", "cdn", "mail", "portal", "invoice", "parcel", "static", "api",
    "sync", "cloud", "support", "account", "verify",
];
pub const FILE_NAMES: &[(&str, &str)] = &[
    ("analysis.pdf", "application/pdf"),
    ("iocs.txt", "text/plain"),
    ("sample-config.json", "application/json"),
    ("network-capture-summary.txt", "text/plain"),
    ("yara-rules.txt", "text/plain"),
    ("screenshot.png", "image/png"),
    ("technical-report.pdf", "application/pdf"),
];
pub const FILE_NAMES_INTL: &[(&str, &str)] = &[
    ("rapport d'analyse.pdf", "application/pdf"),
    ("报告.pdf", "application/pdf"),
    ("indicateurs été.txt", "text/plain"),
    ("Übersicht 🔍.json", "application/json"),
];
pub const EXTERNAL_SOURCES: &[(&str, &str)] = &[
    ("ACME CERT", "https://cert.example.org/advisories/"),
    ("Northwind Blog", "https://blog.northwind.example/threats/"),
    ("MISP Feed", "https://misp.example.net/events/view/"),
    ("VirusTotal", "https://www.virustotal.example/gui/file/"),
];

/// Picks from `plain` or, for non-ASCII objects, from `intl`.
pub fn choose<'a>(seed: u64, intl: bool, plain: &[&'a str], intl_pool: &[&'a str]) -> &'a str {
    let pool = if intl { intl_pool } else { plain };
    pool[(derive(seed, 0x7E47) % pool.len() as u64) as usize]
}

/// A description of a few sentences (60–1,200 bytes, a long tail), stable for `seed`.
pub fn description(seed: u64, intl: bool) -> String {
    let mut out = Vec::new();
    description_json(&mut out, seed, intl);
    let text: String = serde_json::from_slice(&out).unwrap_or_default();
    text
}

/// Appends [`description`] as a quoted JSON string, from pre-escaped sentences (no escaping
/// pass: this is on the hot path of rendering).
pub fn description_json(out: &mut Vec<u8>, seed: u64, intl: bool) {
    let mut rng = SplitMix::new(seed);
    let count = sentence_count(&mut rng);
    out.push(b'"');
    for i in 0..count {
        if i > 0 {
            out.push(b' ');
        }
        let intl_sentence = intl && rng.chance(0.6);
        let pool = if intl_sentence {
            &*SENTENCES_INTL_ESCAPED
        } else {
            &*SENTENCES_ESCAPED
        };
        out.extend_from_slice(&pool[rng.pick(pool.len())]);
    }
    out.push(b'"');
}

fn sentence_count(rng: &mut SplitMix) -> u64 {
    match rng.below(100) {
        0..=19 => 1,
        20..=59 => 2 + rng.below(3),
        60..=94 => 4 + rng.below(4),
        _ => 8 + rng.below(8),
    }
}
