// Every string of the UI, in Chinese and English. `t(key, vars)` picks the current language.

const STRINGS = {
  zh: {
    title: '城市安全运行监测',
    subtitle: 'cimtwin 监测台',
    'login.heading': '登录监测台',
    'login.hint': '输入 API 密钥（管理员、值班员或分析员）。管理员密钥在 var/admin-api-key。',
    'login.key': 'API 密钥',
    'login.submit': '登录',
    'login.checking': '正在验证…',
    'login.invalid': '密钥无效或已吊销',
    'login.forbidden': '此密钥的角色不能使用监测台（需要管理员、值班员或分析员）',
    'login.failed': '无法连接 API：{error}',
    logout: '退出',
    'lang.switch': 'English',
    'lang.switchTitle': 'Switch to English',
    'search.placeholder': '搜索建筑（编号或名称）',
    'search.none': '没有找到建筑',
    'live.connected': '实时',
    'live.connecting': '连接中…',
    'live.disconnected': '已断开，重试中',
    'alerts.heading': '告警',
    'alerts.unfinished': '{n} 条未完成',
    'alerts.empty': '暂无告警',
    'alerts.more': '另有 {n} 条未显示',
    'alert.ack': '确认',
    'alert.dispatch': '派单',
    'alert.dispatchOther': '改派…',
    'alert.resolve': '办结',
    'alert.party': '责任主体',
    'alert.noParty': '未指定责任主体',
    'alert.chooseParty': '选择责任主体',
    'alert.routed': '（路由）',
    'alert.confirmDispatch': '派单',
    'alert.cancel': '取消',
    'alert.building': '建筑 {id}',
    'alert.count': '{n} 次',
    'alert.value': '值 {v}',
    'alert.failed': '操作失败：{detail}',
    'building.close': '关闭',
    'building.state': '状态',
    'building.floors': '楼层',
    'building.floor': '选择楼层',
    'building.noFloors': '此建筑没有楼层数据',
    'building.noRooms': '此楼层没有房间数据',
    'building.loading': '加载中…',
    'building.notFound': '建筑 {id} 不存在',
    'building.height': '高度 {h} 米',
    'building.floorsAbove': '地上 {n} 层',
    'building.floorsBelow': '地下 {n} 层',
    'building.rooms': '房间',
    'building.onFloor': '楼层公共区域',
    'building.noSensors': '无传感器',
    'building.level': '楼层 {level}',
    'building.other': '建筑内其他传感器',
    'legend.building': '建筑（按传感器状态）',
    'legend.sensor': '传感器',
    'legend.alert': '未完成告警',
    'legend.component': '部件',
    'legend.none': '无传感器',
    'state.ok': '正常',
    'state.warning': '预警',
    'state.alarm': '告警',
    'state.offline': '离线',
    'state.no_data': '无数据',
    'state.none': '无状态',
    'status.open': '待确认',
    'status.acknowledged': '已确认',
    'status.dispatched': '已派单',
    'status.resolved': '已办结',
    'status.closed': '已关闭',
    'severity.info': '提示',
    'severity.warning': '一般',
    'severity.major': '严重',
    'severity.critical': '紧急',
    'popup.sensor': '传感器',
    'popup.component': '部件',
    'popup.time': '时间',
    'popup.status': '状态',
    'error.generic': '出错了：{detail}',
    'error.noStates': '建筑实时状态暂不可用',
  },
  en: {
    title: 'City safety monitoring',
    subtitle: 'cimtwin console',
    'login.heading': 'Log in to the console',
    'login.hint': 'Enter an API key (admin, operator or analyst). The admin key is in var/admin-api-key.',
    'login.key': 'API key',
    'login.submit': 'Log in',
    'login.checking': 'Checking…',
    'login.invalid': 'Unknown or revoked API key',
    'login.forbidden': "This key's role cannot use the console (admin, operator or analyst needed)",
    'login.failed': 'Cannot reach the API: {error}',
    logout: 'Log out',
    'lang.switch': '中文',
    'lang.switchTitle': '切换到中文',
    'search.placeholder': 'Find a building (id or name)',
    'search.none': 'No building found',
    'live.connected': 'Live',
    'live.connecting': 'Connecting…',
    'live.disconnected': 'Disconnected, retrying',
    'alerts.heading': 'Alerts',
    'alerts.unfinished': '{n} unfinished',
    'alerts.empty': 'No alerts',
    'alerts.more': '{n} more not shown',
    'alert.ack': 'Acknowledge',
    'alert.dispatch': 'Dispatch',
    'alert.dispatchOther': 'Other party…',
    'alert.resolve': 'Resolve',
    'alert.party': 'Party',
    'alert.noParty': 'no responsible party',
    'alert.chooseParty': 'Choose a party',
    'alert.routed': ' (routed)',
    'alert.confirmDispatch': 'Dispatch',
    'alert.cancel': 'Cancel',
    'alert.building': 'building {id}',
    'alert.count': '{n}×',
    'alert.value': 'value {v}',
    'alert.failed': 'Action failed: {detail}',
    'building.close': 'Close',
    'building.state': 'State',
    'building.floors': 'Floors',
    'building.floor': 'Pick a floor',
    'building.noFloors': 'No floors recorded for this building',
    'building.noRooms': 'No rooms recorded on this floor',
    'building.loading': 'Loading…',
    'building.notFound': 'Building {id} does not exist',
    'building.height': '{h} m high',
    'building.floorsAbove': '{n} floors above ground',
    'building.floorsBelow': '{n} below',
    'building.rooms': 'Rooms',
    'building.onFloor': 'On the floor (no room)',
    'building.noSensors': 'no sensors',
    'building.level': 'Level {level}',
    'building.other': 'Other sensors in the building',
    'legend.building': 'Buildings (by sensor state)',
    'legend.sensor': 'Sensors',
    'legend.alert': 'Unfinished alert',
    'legend.component': 'Component',
    'legend.none': 'no sensors',
    'state.ok': 'OK',
    'state.warning': 'Warning',
    'state.alarm': 'Alarm',
    'state.offline': 'Offline',
    'state.no_data': 'No data',
    'state.none': 'no state',
    'status.open': 'Open',
    'status.acknowledged': 'Acknowledged',
    'status.dispatched': 'Dispatched',
    'status.resolved': 'Resolved',
    'status.closed': 'Closed',
    'severity.info': 'Info',
    'severity.warning': 'Warning',
    'severity.major': 'Major',
    'severity.critical': 'Critical',
    'popup.sensor': 'Sensor',
    'popup.component': 'Component',
    'popup.time': 'Time',
    'popup.status': 'Status',
    'error.generic': 'Something went wrong: {detail}',
    'error.noStates': 'Live building states are not available yet',
  },
};

export const LANGS = ['zh', 'en'];
const STORAGE_KEY = 'cimtwin.lang';
const listeners = new Set();

function initialLang() {
  const saved = localStorage.getItem(STORAGE_KEY);
  if (LANGS.includes(saved)) return saved;
  return (navigator.language || '').toLowerCase().startsWith('zh') ? 'zh' : 'en';
}

let lang = initialLang();

export function getLang() {
  return lang;
}

export function t(key, vars) {
  let s = STRINGS[lang][key] ?? STRINGS.en[key] ?? key;
  if (vars) s = s.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
  return s;
}

/** Fills every element with data-i18n (text), data-i18n-placeholder and data-i18n-title under root. */
export function translate(root = document) {
  document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
  document.title = `${t('title')} · cimtwin`;
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-placeholder]')) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of root.querySelectorAll('[data-i18n-title]')) el.title = t(el.dataset.i18nTitle);
}

export function setLang(next) {
  if (!LANGS.includes(next) || next === lang) return;
  lang = next;
  localStorage.setItem(STORAGE_KEY, lang);
  translate();
  for (const fn of listeners) fn(lang);
}

export function onLangChange(fn) {
  listeners.add(fn);
}

/** A time as the operator reads it: HH:MM:SS today, else with the date. */
export function formatTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const today = new Date().toDateString() === d.toDateString();
  const locale = lang === 'zh' ? 'zh-CN' : 'en-GB';
  return new Intl.DateTimeFormat(locale, today
    ? { hour: '2-digit', minute: '2-digit', second: '2-digit' }
    : { month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit' }).format(d);
}

export function formatNumber(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '—';
  const abs = Math.abs(v);
  return Number(v).toLocaleString(lang === 'zh' ? 'zh-CN' : 'en-GB',
    { maximumFractionDigits: abs >= 100 ? 1 : abs >= 1 ? 2 : 3, useGrouping: false });
}
